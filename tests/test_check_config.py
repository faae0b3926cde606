"""`mailseal check-config`: every problem, one line each, exit 2 (issue 11,
items 2, 5 and 9); key expiry in `keys list`, `keys generate` and the daemon log."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from .conftest import run_cli
from .harness import Daemon, free_port
from .postfix import available


def check(config, *extra, env=None):
    result = run_cli("-c", str(config), "check-config", *extra, env=env)
    assert b"Traceback" not in result.stderr
    return result.returncode, result.stderr.decode().splitlines(), result.stdout.decode()


def write(path, text):
    path.write_text(text)
    return path


def test_every_problem_is_reported_one_line_each(tmp_path):
    a, b = free_port(), free_port()
    config = write(tmp_path / "mailseal.toml", f"""
[keystore]
path = "state/keystore.sqlite3"
expiry_warning = "soon"

[server]
max_message_size = "lots"
wokers = 2

[outbound]
listen = "127.0.0.1:{a}"
next_hop = "127.0.0.1:{a}"

[inbound]
listen = "127.0.0.1:{a}"
next_hop = "127.0.0.1:{b}"
replay_window = "2d"
max_clock_skew = "an hour"
""")
    status, lines, _ = check(config)
    assert status == 2
    expected = [
        "[keystore] expiry_warning: expected a duration",
        "[server] max_message_size: expected a size",
        "[server]: unknown setting(s) wokers",
        "[inbound] max_clock_skew: expected a duration",
        f"keystore {tmp_path / 'state' / 'keystore.sqlite3'} does not exist",
        f"[outbound] listen = 127.0.0.1:{a} and [inbound] listen = 127.0.0.1:{a} overlap",
        f"[outbound] next_hop = 127.0.0.1:{a} is its own listener",
        f"[outbound] next_hop = 127.0.0.1:{a} is the [inbound] listener",
        "[inbound] replay_window = 2d is shorter than a mail queue's lifetime (5d",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == len(expected), lines
    assert all(line.startswith(f"{config}: ") for line in lines)


def test_a_next_hop_into_the_other_listener_and_a_clean_configuration(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:10026"},
               inbound={"next_hop": "127.0.0.1:10028", "replay_window": "7d"})
    d.cli("keys", "init")
    status, lines, out = check(d.config)
    assert (status, lines) == (0, []) and "configuration OK" in out
    d.config.write_text(d.config.read_text().replace("127.0.0.1:10028", f"127.0.0.1:{d.outbound_port}"))
    status, lines, _ = check(d.config)
    assert status == 2 and len(lines) == 1
    assert f"[inbound] next_hop = 127.0.0.1:{d.outbound_port} is the [outbound] listener: mail would loop" in lines[0]


def test_the_forward_listener_is_checked_like_the_others(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:10026"},
               inbound={"next_hop": "127.0.0.1:10028", "replay_window": "7d"})
    d.cli("keys", "init")
    base = d.config.read_text()
    # The inbound next hop into the forward listener, and the forward listener on the inbound one.
    d.config.write_text(base.replace('next_hop = "127.0.0.1:10026"', 'next_hop = "127.0.0.1:10026"\n'
                                     f'forward_listen = "127.0.0.1:{d.inbound_port}"')
                        .replace("127.0.0.1:10028", f"127.0.0.1:{d.inbound_port}"))
    status, lines, _ = check(d.config)
    assert status == 2 and len(lines) == 3, lines
    assert f"[inbound] listen = 127.0.0.1:{d.inbound_port} and [outbound] forward_listen = " in lines[0]
    assert f"[inbound] next_hop = 127.0.0.1:{d.inbound_port} is its own listener" in lines[1]
    assert "is [outbound] forward_listen: mail would loop" in lines[2]
    d.config.write_text(base.replace('next_hop = "127.0.0.1:10026"', 'next_hop = "127.0.0.1:10026"\n'
                                     f'forward_listen = "127.0.0.1:{d.outbound_port}"'))
    status, lines, _ = check(d.config)
    assert status == 2 and len(lines) == 1 and "[outbound] forward_listen: must differ" in lines[0], lines


def _expire(daemon, owner: str, when: float) -> None:
    db = sqlite3.connect(daemon.dir / "state" / "keystore.sqlite3")
    db.execute("UPDATE keys SET expires = ? WHERE owner = ?", (int(when), owner))
    db.commit()
    db.close()


def test_expired_and_expiring_keys(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:10026"})
    d.cli("keys", "generate", "bob@b.test", "--expires", "3d")
    d.cli("keys", "import", "carol@c.test", str(__import__("mailseal").age.generate().recipient()))
    d.cli("keys", "import", "dave@d.test", str(__import__("mailseal").age.generate().recipient()),
          "--expires", "30d")
    d.cli("keys", "generate", "old@b.test", "--expires", "1d")
    d.cli("keys", "revoke", "old@b.test")  # revoked: no longer in use, no warning
    _expire(d, "carol@c.test", time.time() - 86400)
    status, lines, _ = check(d.config)
    assert status == 2
    assert sum("bob@b.test's key that opens mail" in line and "in 3 days" in line for line in lines) == 1
    assert sum("bob@b.test's signing key" in line and "in 3 days" in line for line in lines) == 1
    assert sum("carol@c.test's key that mail is sealed to" in line and "expired on" in line for line in lines) == 1
    assert len(lines) == 3 and all(": warning: " in line for line in lines), lines
    # The unit's ExecStartPre: reported, but the gateway still starts.
    status, lines_at_startup, out = check(d.config, "--startup")
    assert status == 0 and lines_at_startup == lines and "configuration OK" in out
    listed = run_cli("-c", str(d.config), "keys", "list")
    assert listed.returncode == 0 and listed.stderr.decode().count("mailseal: warning: ") == 3
    # N days is configurable: at 2 days bob's keys are not mentioned yet, carol's is.
    d.config.write_text(d.config.read_text().replace('[keystore]\n', '[keystore]\nexpiry_warning = "2d"\n'))
    status, lines, _ = check(d.config)
    assert status == 2 and len(lines) == 1 and "carol@c.test" in lines[0]


def test_generate_refuses_an_expiry_in_the_past(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={})
    for when in ("2020-01-01", "0s"):
        result = run_cli("-c", str(d.config), "keys", "generate", "bob@b.test", "--expires", when)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.count("\n") == 1 and "is not in the future" in err, err
    assert not (d.dir / "state" / "keystore.sqlite3").exists()


def test_the_daemon_logs_keys_about_to_expire(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:10026"}, server={"workers": 2})
    d.cli("keys", "generate", "bob@b.test", "--expires", "5d")
    d.start()
    try:
        deadline = time.monotonic() + 20
        while not ("key expiry:" in d.log_text() and "ready with 2 workers" in d.log_text()) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        log = d.log_text()
    finally:
        d.stop()
    found = re.findall(r"WARNING mailseal.server: key expiry: bob@b.test's key that opens mail \([\w-]+\) "
                       r"expires on \d{4}-\d\d-\d\d, in 5 days", log)
    assert len(found) == 1, log  # one process says it, not each worker


@pytest.mark.skipif(not available(), reason="needs root and Debian's postfix (make test installs it)")
def test_sizes_are_compared_with_postfix(tmp_path):
    from .postfix_recipe import RecipeHost

    host = RecipeHost("a.test", internet=free_port())
    try:
        config = host.mailseal.config
        host.mailseal.cli("keys", "init")
        status, lines, out = check(config, "--postfix-config", str(host.etc))
        assert (status, lines) == (0, []) and "configuration OK" in out
        main = host.etc / "main.cf"
        main.write_text(main.read_text() + "virtual_mailbox_limit = 51200000\nmaximal_queue_lifetime = 10d\n")
        master = host.etc / "master.cf"
        master.write_text(master.read_text().replace("message_size_limit=50000000", "message_size_limit=60000000")
                          .replace("message_size_limit=68000000", "message_size_limit=0"))
        status, lines, _ = check(config, env={"MAILSEAL_POSTFIX_CONFIG": str(host.etc)})
        assert status == 2
        submission, smtp = host.ports["submission"], host.ports["smtp"]
        expected = [
            "main.cf virtual_mailbox_limit = 51200000 is smaller than message_size_limit = 69000000",
            f"service 127.0.0.1:{submission}/inet: message_size_limit = 60000000 is above mailseal's "
            "max_message_size (50000000)",
            f"service 127.0.0.1:{smtp}/inet: message_size_limit = no limit is above what the inbound listener takes",
            "[inbound] replay_window = 1w is shorter than a mail queue's lifetime (10d, maximal_queue_lifetime here)",
        ]
        for fragment in expected:
            assert sum(fragment in line for line in lines) == 1, (fragment, lines)
        assert len(lines) == len(expected), lines
        status, lines, _ = check(config, "--postfix-config", str(tmp_path / "nothing"))
        assert status == 2 and len(lines) == 1 and "Postfix: " in lines[0]
    finally:
        host.cleanup()
