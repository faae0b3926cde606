"""`mailseal quarantine release|delete`: what leaves the quarantine, and how.

Mail is quarantined by the real inbound listener (or, for clear mail, which
no listener quarantines yet, put there with the quarantine module itself);
the real CLI releases it to a capturing SMTP sink."""

from __future__ import annotations

import re
import shutil

import pytest

from mailseal import age, bundle
from mailseal.quarantine import Quarantine

from .conftest import run_cli
from .harness import Daemon, Sink, free_port, smtp_transaction
from .test_inbound_headers import FORGED, KEPT

RELEASED = b"Mailseal-Status: released from quarantine by an administrator; reason="


def quarantined_id(reply: tuple[int, bytes]) -> str:
    assert reply[0] == 250, reply
    return re.search(rb"quarantined as ([0-9A-F]{16})", reply[1]).group(1).decode()


def one_line(result) -> str:
    assert b"Traceback" not in result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def cli(daemon: Daemon, *args: str):
    return run_cli("-c", str(daemon.config), *args)


def test_a_bundle_is_opened_again_once_its_key_is_back(tmp_path):
    """Quarantined for want of a key; the keystore restored from backup; release opens it."""
    with Sink() as final, Sink() as wire:
        backup = Daemon(tmp_path / "backup")  # the keystore as it was before it got lost
        backup.cli("keys", "generate", "bob@b.test")
        card = tmp_path / "bob.card"
        card.write_text(backup.cli("keys", "export", "bob@b.test"))
        a = Daemon(tmp_path / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"})
        a.cli("keys", "import", "bob@b.test", str(card))
        q = Daemon(tmp_path / "q", inbound={"next_hop": f"127.0.0.1:{final.port}", "on_failure": "quarantine"})
        q.cli("keys", "generate", "carol@b.test")
        a.start()
        q.start()
        try:
            assert smtp_transaction(a.outbound_port, "ceo@bank.test", ["bob@b.test"], FORGED).data[0] == 250
            [sealed] = wire.wait(1)
            entry = quarantined_id(smtp_transaction(q.inbound_port, "ceo@bank.test", ["bob@b.test"], sealed.data).data)

            # The cause is not fixed yet: refused again, kept, nothing delivered.
            refused = cli(q, "quarantine", "release", entry)
            line = one_line(refused)
            assert refused.returncode == 1 and "550 5.7.5 No local key" in line and "kept in quarantine" in line
            assert "--as-is" in line and final.messages == []
            assert entry in q.cli("quarantine", "list")
        finally:
            q.stop()
            a.stop()
        state = q.dir / "state"
        for old in state.glob("keystore.sqlite3*"):
            old.unlink()
        # The keystore, its master key and its head file, as the backup has them
        # (without the head file the restored keystore would be taken for a rollback).
        for name in ("keystore.sqlite3", "master.key", "keystore.head"):
            shutil.copy2(backup.dir / "state" / name, state / name)

        released = cli(q, "quarantine", "release", entry, "--open")
        assert released.returncode == 0, released.stderr
        assert f"released {entry}: opened and delivered to bob@b.test" in released.stdout.decode()
        [opened] = final.wait(1)
        assert opened.rcpts == ["bob@b.test"] and opened.mail_from == "ceo@bank.test"
        trace, rest = opened.data.split(b"\r\n", 1)
        # The inbound path's own work: trace header, forged verdicts and Mailseal-* gone.
        assert trace.startswith(b"Mailseal-Status: opened; unsigned; serial=") and rest == KEPT
        assert "quarantine is empty" in q.cli("quarantine", "list")

        # The release claimed the serial in the daemon's replay cache.
        q.start()
        try:
            again = smtp_transaction(q.inbound_port, "ceo@bank.test", ["bob@b.test"], sealed.data).data
            assert b"(replayed)" in again[1], again
        finally:
            q.stop()
        assert len(final.messages) == 1
        assert "Traceback" not in q.log_text()


def test_list_show_and_a_sealed_message_released_as_is_without_forged_mailseal_fields(tmp_path):
    with Sink() as final:
        q = Daemon(tmp_path / "q", inbound={"next_hop": f"127.0.0.1:{final.port}", "on_failure": "quarantine"})
        q.cli("keys", "generate", "bob@b.test")
        q.start()
        try:
            sealed = bundle.seal(KEPT, [age.generate().recipient()], bind=["bob@b.test"])
            forged = b"Mailseal-Status: opened; key=trust-me\r\n" + sealed.replace(
                b"Subject:", b"mailseal-verified: yes\r\n  folded on\r\nSubject:", 1)
            entry = quarantined_id(smtp_transaction(q.inbound_port, "ceo@bank.test", ["bob@b.test"], forged).data)
        finally:
            q.stop()
        assert final.messages == []
        listing = q.cli("quarantine", "list")
        assert entry in listing and "no-matching-key" in listing and "ceo@bank.test" in listing
        shown = cli(q, "quarantine", "show", entry)
        assert shown.returncode == 0 and shown.stdout.endswith(forged)

        released = cli(q, "quarantine", "release", entry, "--as-is")
        assert released.returncode == 0, released.stderr
        assert "delivered as received" in released.stdout.decode()
        [got] = final.wait(1)
        assert got.rcpts == ["bob@b.test"]
        assert got.data == RELEASED + b"no-matching-key\r\n" + sealed
        assert "quarantine is empty" in q.cli("quarantine", "list")


@pytest.fixture
def clear_entry(tmp_path):
    """A quarantine with one clear message for two recipients, released to a sink."""
    with Sink() as final:
        q = Daemon(tmp_path / "q", inbound={"next_hop": f"127.0.0.1:{final.port}", "on_failure": "quarantine"})
        message = (b" injected; key=trust-me\r\nFrom: mallory@evil.test\r\nMailseal-Status: opened; key=trust-me\r\n"
                   b"Authentication-Results: b.test; dkim=pass\r\nSubject: hi\r\n\r\nbody\r\n")
        quarantine = Quarantine(q.dir / "state" / "quarantine")
        entry = quarantine.put(message, "mallory@evil.test", ["x@b.test", "y@b.test"], "sender-policy",
                               {"ADDR": "192.0.2.7", "NAME": "mx.evil.test"})
        yield q, quarantine, entry, final


def test_clear_mail_is_released_as_received_without_mailseal_fields(clear_entry):
    q, quarantine, entry, final = clear_entry
    released = cli(q, "quarantine", "release", entry)
    assert released.returncode == 0, released.stderr
    [got] = final.wait(1)
    # Leading continuation lines would extend the release trace: gone too.
    # Clear mail keeps other verdicts unless strip_headers_from_clear_mail.
    assert got.data == (RELEASED + b"sender-policy\r\nFrom: mallory@evil.test\r\n"
                        b"Authentication-Results: b.test; dkim=pass\r\nSubject: hi\r\n\r\nbody\r\n")
    assert got.rcpts == ["x@b.test", "y@b.test"]
    assert got.xforward.get("ADDR") == "192.0.2.7"  # the original client, for the next hop's checks
    assert quarantine.list() == []


def test_a_partial_release_keeps_the_entry_for_the_recipients_left(clear_entry):
    q, quarantine, entry, final = clear_entry
    final.handler.rcpt_reply["y@b.test"] = "550 5.1.1 <y@b.test>: mailbox unavailable"
    refused = cli(q, "quarantine", "release", entry)
    line = one_line(refused)
    assert refused.returncode == 1
    assert "not released to y@b.test: 550 5.1.1" in line and "delivered as received to x@b.test" in line
    [got] = final.wait(1)
    assert got.rcpts == ["x@b.test"]
    [left] = quarantine.list()
    assert left.id == entry and left.rcpts == ["y@b.test"]

    final.handler.rcpt_reply.clear()
    assert cli(q, "quarantine", "release", entry).returncode == 0
    assert [m.rcpts for m in final.wait(2)] == [["x@b.test"], ["y@b.test"]]
    assert quarantine.list() == []


def test_release_with_the_next_hop_down_keeps_the_entry(tmp_path):
    q = Daemon(tmp_path / "q", inbound={"next_hop": f"127.0.0.1:{free_port()}", "on_failure": "quarantine"})
    quarantine = Quarantine(q.dir / "state" / "quarantine")
    entry = quarantine.put(b"From: a@a.test\r\n\r\nx\r\n", "a@a.test", ["x@b.test"], "sender-policy", {})
    refused = cli(q, "quarantine", "release", entry)
    assert refused.returncode == 1 and "451 4.4.1" in one_line(refused) and "kept in quarantine" in one_line(refused)
    assert [e.id for e in quarantine.list()] == [entry]


def test_delete_and_bad_requests_are_one_line_errors(clear_entry):
    q, quarantine, entry, final = clear_entry
    for args, code, fragment in [
        (("release", entry, "--open"), 2, f"{entry} is not a sealed message: release it without --open"),
        (("release", entry, "--open", "--as-is"), 2, "not allowed with argument"),
        (("show", entry, "--as-is"), 2, "--open and --as-is go with `quarantine release`"),
        (("delete",), 2, "quarantine delete needs an ID"),
        (("delete", "../../etc"), 2, "is not a quarantine id"),
        (("release", "0123456789ABCDEF"), 2, "no quarantined message 0123456789ABCDEF"),
    ]:
        result = cli(q, "quarantine", *args)
        assert result.returncode == code and fragment in one_line(result), (args, result.stderr)
    assert [e.id for e in quarantine.list()] == [entry] and final.messages == []

    deleted = cli(q, "quarantine", "delete", entry.lower())
    assert deleted.returncode == 0 and f"deleted {entry}" in deleted.stdout.decode()
    assert quarantine.list() == [] and list(quarantine.dir.iterdir()) == []
    again = cli(q, "quarantine", "delete", entry)
    assert again.returncode == 2 and f"no quarantined message {entry}" in one_line(again)
