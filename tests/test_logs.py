"""The per-message log line: Postfix queue ids, recipients as configured,
decision and reply, RCPT refusals, timestamps, JSON; never content or keys."""

from __future__ import annotations

import json
import re

from mailseal import age

from .harness import Daemon, Sink, smtp_transaction

MARKER = "body-marker-5f1d0c"
MESSAGE = (f"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: {MARKER}-subject\r\n"
           f"Message-ID: <log@a.test>\r\n\r\n{MARKER}\r\n").encode()


def secrets_of(daemon: Daemon, identity: age.Identity | None = None) -> list[str]:
    """Every key string an attacker reading the log must not find."""
    master = (daemon.dir / "state" / "master.key").read_text().strip()
    found = ["AGE-SECRET-KEY", master, master[:20]]
    if identity is not None:
        found += [str(identity), str(identity.recipient())]
    return found


def test_one_line_per_message_with_queue_ids_recipients_decision_and_reply(tmp_path):
    bob = age.generate()
    with Sink() as sink:
        sink.handler.reply = "250 2.0.0 Ok: queued as 7ABCD12345"
        d = Daemon(tmp_path / "a", outbound={"next_hop": f"127.0.0.1:{sink.port}"})
        d.cli("keys", "import", "bob@b.test", str(bob.recipient()))
        d.cli("policy", "set", "@secret.test", "require")
        d.start()
        try:
            t = smtp_transaction(d.outbound_port, "alice@a.test", ["bob@b.test", "x@secret.test"], MESSAGE,
                                 xforward="NAME=client.a.test ADDR=192.0.2.1 IDENT=4F2A91C3D")
            assert t.rcpts[1][0] == 550 and t.data[0] == 250
            sink.wait(1)
        finally:
            d.stop()
        log = d.log_text()
    [line] = [line for line in log.splitlines() if "decision=" in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO mailseal\.gateway: [0-9A-F]{12} outbound ", line)
    for part in ("queue-id=4F2A91C3D", "from=<alice@a.test>", "message-id=<log@a.test>", "rcpts=1",
                 "to=<bob@b.test>", "decision=pq", 'reply="250 2.0.0"', "next-hop=250",
                 "next-queue-id=7ABCD12345"):
        assert part in line, (part, line)
    [refused] = [line for line in log.splitlines() if "rcpt-refused" in line]
    assert "to=<x@secret.test> reason=policy-require" in refused and 'reply="550 5.7.1"' in refused
    assert MARKER not in log
    for secret in secrets_of(d):
        assert secret not in log


def test_json_lines_with_recipient_domains_only_and_no_secrets(tmp_path, monkeypatch):
    with Sink() as final:
        b = Daemon(tmp_path / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"},
                   server={"log_format": "json", "log_recipients": "domains"})
        b.cli("keys", "generate", "bob@b.test")
        card = tmp_path / "bob.card"
        card.write_text(b.cli("keys", "export", "bob@b.test"))
        a = Daemon(tmp_path / "a", outbound={"next_hop": f"127.0.0.1:{b.inbound_port}"},
                   server={"log_recipients": "count"})
        a.cli("keys", "import", "bob@b.test", str(card))
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # as under systemd: journald stamps the time
        b.start()
        a.start()
        try:
            t = smtp_transaction(a.outbound_port, "alice@a.test", ["bob@b.test", "carol@b.test"], MESSAGE)
            assert [c for c, _ in t.rcpts] == [250, 250]
            final.wait(2)  # carol has no key at A: a clear copy of her own
        finally:
            a.stop()
            b.stop()
        # Under journald, text lines carry no timestamp of their own.
        a_log = a.log_text()
        [line] = [line for line in a_log.splitlines() if "decision=" in line]
        assert re.match(r"INFO mailseal\.gateway: [0-9A-F]{12} outbound from=<alice@a\.test> ", line), line
        assert "rcpts=2 decision=clear+pq " in line and "to=" not in line and "to-domains=" not in line
        assert "bob@b.test" not in a_log and "carol@b.test" not in a_log
        b_log = b.log_text()
        lines = [json.loads(line) for line in b_log.splitlines() if line.strip()]
        assert all(set(e) >= {"time", "level", "logger"} for e in lines)
        messages = {e["decision"]: e for e in lines if e.get("decision")}
        assert set(messages) == {"opened", "clear"}
        for msg in messages.values():
            assert msg["direction"] == "inbound" and msg["reply"] == "250 2.0.0"
            assert msg["to_domains"] == ["b.test"] and msg["rcpts"] == 1 and "to" not in msg
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", msg["time"])
        assert "bob@b.test" not in b_log and "carol@b.test" not in b_log
        for log, daemon in ((a_log, a), (b_log, b)):
            assert MARKER not in log
            for secret in secrets_of(daemon):
                assert secret not in log
