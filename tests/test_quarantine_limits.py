"""Quarantine limits (age, size quota, oldest first, logged) and the listing
an administrator reads: a header row, the client in words, --json."""

from __future__ import annotations

import json
import re

from mailseal import age, bundle
from mailseal.quarantine import Quarantine

from .conftest import run_cli
from .harness import Daemon, Sink, smtp_transaction
from .test_quarantine_release import one_line

DAY = 86400


def cli(daemon: Daemon, *args: str):
    return run_cli("-c", str(daemon.config), *args)


def quarantine_of(daemon: Daemon, clock) -> Quarantine:
    return Quarantine(daemon.dir / "state" / "quarantine", clock=clock)


def test_list_has_a_header_row_a_readable_client_and_json(tmp_path):
    d = Daemon(tmp_path / "q", inbound={"next_hop": "127.0.0.1:9", "on_failure": "quarantine"})
    q = quarantine_of(d, clock=lambda: 1_700_000_000)
    relayed = q.put(b"Subject: x\r\n\r\none\r\n", "eve@evil.test", ["bob@b.test"], "tampered",
                    {"NAME": "mx.evil.test", "ADDR": "192.0.2.7", "PROTO": "ESMTP"})
    direct = q.put(b"Subject: y\r\n\r\ntwo\r\n", "", ["carol@b.test", "dan@b.test"], "replayed",
                   {"peer": "('127.0.0.1', 50211)"})

    out = d.cli("quarantine", "list").splitlines()
    assert re.fullmatch(r"ID\s+RECEIVED \(UTC\)\s+REASON\s+FROM\s+TO\s+SIZE\s+CLIENT", out[0])
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == {relayed, direct}
    assert "2023-11-14 22:13:20" in rows[relayed] and rows[relayed].endswith("mx.evil.test [192.0.2.7]")
    assert "<eve@evil.test>" in rows[relayed] and "tampered" in rows[relayed]
    assert rows[direct].endswith("127.0.0.1 port 50211") and "carol@b.test,dan@b.test" in rows[direct]

    listed = json.loads(d.cli("quarantine", "list", "--json"))
    by_id = {e["id"]: e for e in listed}
    assert by_id[relayed]["client_text"] == "mx.evil.test [192.0.2.7]"
    assert by_id[relayed]["client"]["ADDR"] == "192.0.2.7"
    assert by_id[direct]["rcpts"] == ["carol@b.test", "dan@b.test"] and by_id[direct]["reason"] == "replayed"
    assert json.loads(d.cli("quarantine", "list", "--json")) and d.cli("quarantine", "show", direct).startswith(
        f"id: {direct}\nreason: replayed\nfrom: <>\nto: carol@b.test, dan@b.test\nclient: 127.0.0.1 port 50211\n")

    for args, fragment in ((("show", direct, "--json"), "--json goes with"),
                           (("list", "--max-age", "1d"), "--max-age and --max-size go with"),
                           (("purge", direct), "takes no ID"),
                           (("purge", "--max-age", "soon"), "--max-age: expected a duration"),
                           (("purge", "--max-size", "big"), "--max-size: expected a size")):
        result = cli(d, "quarantine", *args)
        assert result.returncode == 2 and fragment in one_line(result), (args, result.stderr)


def test_purge_removes_what_is_too_old_then_the_oldest_past_the_quota(tmp_path):
    d = Daemon(tmp_path / "q", inbound={"next_hop": "127.0.0.1:9", "on_failure": "quarantine",
                                        "quarantine_max_age": "10d", "quarantine_max_size": "2500"})
    import time

    now = time.time()
    ids = {}
    for name, days_old in (("ancient", 11), ("old", 5), ("middle", 3), ("young", 1), ("new", 0)):
        q = quarantine_of(d, clock=lambda days_old=days_old: now - days_old * DAY)
        ids[name] = q.put(b"x" * 1000, "s@a.test", ["bob@b.test"], "no-local-key", {})

    # Nothing older than 10 days, then oldest first until at most 2500 bytes are left.
    out = d.cli("quarantine", "purge").splitlines()
    purged = {line.split()[1]: line for line in out if line.startswith("purged ")}
    assert set(purged) == {ids["ancient"], ids["old"], ids["middle"]}
    assert "older than quarantine_max_age" in purged[ids["ancient"]]
    assert "over quarantine_max_size" in purged[ids["old"]]
    assert out[-1] == "3 purged, 2 kept"
    left = {e["id"] for e in json.loads(d.cli("quarantine", "list", "--json"))}
    assert left == {ids["young"], ids["new"]}

    # The command line can ask for less than the configuration.
    out = d.cli("quarantine", "purge", "--max-age", "12h", "--max-size", "none")
    assert f"purged {ids['young']}" in out and out.splitlines()[-1] == "1 purged, 1 kept"


def test_the_daemon_keeps_the_quota_oldest_first_and_logs_it(tmp_path):
    """Mail refused for want of a key piles up; the quota keeps the newest."""
    stranger = age.generate()
    with Sink() as final:
        d = Daemon(tmp_path / "q", inbound={"next_hop": f"127.0.0.1:{final.port}", "on_failure": "quarantine",
                                            "quarantine_max_size": "40KB"})
        d.cli("keys", "generate", "carol@b.test")
        d.start()
        try:
            ids = []
            for i in range(4):
                message = (f"From: a@a.test\r\nTo: bob@b.test\r\nSubject: {i}\r\n\r\n".encode()
                           + b"padding line\r\n" * 700)
                sealed = bundle.seal(message, [stranger.recipient()], eol=b"\r\n", bind=["bob@b.test"])
                reply = smtp_transaction(d.inbound_port, "a@a.test", ["bob@b.test"], sealed).data
                assert reply[0] == 250, reply
                ids.append(re.search(rb"quarantined as ([0-9A-F]{16})", reply[1]).group(1).decode())
            size = len(sealed)
            assert 13_400 < size < 20_000  # so 40 KB holds two entries and not three
            left = [e["id"] for e in json.loads(d.cli("quarantine", "list", "--json"))]
            assert left == ids[2:]
        finally:
            d.stop()
        log = d.log_text()
        for gone in ids[:2]:
            assert re.search(rf"quarantine: purged {gone} \(reason=no-local-key, .*over quarantine_max_size", log)
        assert not any(f"purged {kept}" in log for kept in ids[2:])
        assert final.messages == []
