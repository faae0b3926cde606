"""Recipient binding, as the attacker tries it: a captured bundle re-sent with
other envelope recipients, other spellings of the address, a domain key that
opens any mailbox. The plaintext must reach only the recipients the sender
sealed it for (docs/FORMAT.md, version 2)."""

from __future__ import annotations

import time

import pytest

from mailseal import bundle
from mailseal.keystore import parse_cards

from .harness import Daemon, Sink, smtp_transaction

SECRET = b"the binding secret"


def message(to: str) -> bytes:
    return (f"From: alice@a.test\r\nTo: {to}\r\nSubject: s\r\nMessage-ID: <m@a.test>\r\n\r\n".encode()
            + SECRET + b"\r\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A outbound -> wire (captured); B inbound over SMTP and over LMTP -> final."""
    root = tmp_path_factory.mktemp("binding")
    with Sink() as final, Sink() as wire:
        b = Daemon(root / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        for owner in ("bob@b.test", "carol@b.test", "eve@b.test", "@b.test"):
            b.cli("keys", "generate", owner)
        # A second daemon on B's keystore and replay cache, speaking LMTP (as
        # Postfix's lmtp client would).
        (root / "b_lmtp").mkdir()
        (root / "b_lmtp" / "state").symlink_to(root / "b" / "state")
        b_lmtp = Daemon(root / "b_lmtp", inbound={"next_hop": f"127.0.0.1:{final.port}", "protocol": "lmtp"})
        a = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"})
        for owner in ("bob@b.test", "carol@b.test", "eve@b.test", "@b.test"):
            card = root / f"{owner.strip('@')}.card"
            card.write_text(b.cli("keys", "export", owner))
            a.cli("keys", "import", owner, str(card))
        for daemon in (a, b):
            daemon.start()
        try:
            yield {"a": a, "b": b, "b_lmtp": b_lmtp, "final": final, "wire": wire}
        finally:
            for daemon in (a, b, b_lmtp):
                daemon.stop()


@pytest.fixture(autouse=True)
def clean(world):
    world["final"].messages.clear()
    world["wire"].messages.clear()
    yield


def capture(world, rcpts: list[str], to: str) -> bytes:
    """What A's gateway puts on the wire for these envelope recipients."""
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", rcpts, message(to))
    assert t.data[0] == 250, t
    [sealed] = world["wire"].wait(1)
    world["wire"].messages.clear()
    assert bundle.is_sealed(sealed.data) and SECRET not in sealed.data
    return sealed.data


def delivered_to(world) -> list[str]:
    """Every envelope recipient that received the plaintext at B's final hop."""
    return [r for m in world["final"].messages if SECRET in m.data for r in m.rcpts]


def test_an_added_rcpt_gets_nothing_over_smtp(world):
    sealed = capture(world, ["bob@b.test"], "bob@b.test")
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test", "eve@b.test"], sealed)
    assert t.data[0] == 550 and t.data[1].startswith(b"5.7."), t
    assert delivered_to(world) == []
    # Bob's own delivery is still possible: the refusal claimed nothing.
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], sealed)
    assert t.data[0] == 250, t
    assert delivered_to(world) == ["bob@b.test"]


def test_an_added_rcpt_gets_nothing_over_lmtp_before_or_after_the_real_one(world):
    world["b_lmtp"].start()
    try:
        sealed = capture(world, ["bob@b.test"], "bob@b.test")
        t = smtp_transaction(world["b_lmtp"].inbound_port, "alice@a.test", ["bob@b.test", "eve@b.test"],
                             sealed, lmtp=True)
        assert [code for code, _ in t.data] == [250, 550], t
        assert t.data[1][1].startswith(b"5.7.")
        assert delivered_to(world) == ["bob@b.test"]
        # After bob received it: eve alone, or beside bob's replay.
        for rcpts in (["eve@b.test"], ["eve@b.test", "bob@b.test"]):
            t = smtp_transaction(world["b_lmtp"].inbound_port, "alice@a.test", rcpts, sealed, lmtp=True)
            assert all(code == 550 for code, _ in t.data), t
        assert delivered_to(world) == ["bob@b.test"]
    finally:
        world["b_lmtp"].stop()


def test_a_domain_key_opens_only_for_the_bound_mailbox(world):
    # dave has no key of his own: A seals to the @b.test domain key, which
    # every mailbox of b.test shares. Re-sent to frank: not bound.
    sealed = capture(world, ["dave@b.test"], "dave@b.test")
    for rcpt in ("frank@b.test", "postmaster@b.test"):
        t = smtp_transaction(world["b"].inbound_port, "alice@a.test", [rcpt], sealed)
        assert t.data[0] == 550 and b"5.7.1" in t.data[1], t
    assert delivered_to(world) == []
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["dave@b.test"], sealed)
    assert t.data[0] == 250, t
    assert delivered_to(world) == ["dave@b.test"]


def test_other_spellings_do_not_deliver_it_again(world):
    sealed = capture(world, ["carol@b.test"], "carol@b.test")
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["carol@b.test"], sealed)
    assert t.data[0] == 250, t
    for rcpt in ("carol+1@b.test", "carol+2@b.test", "Carol@b.test", "CAROL@B.TEST", "carol@B.test"):
        t = smtp_transaction(world["b"].inbound_port, "alice@a.test", [rcpt], sealed)
        assert t.data[0] == 550, (rcpt, t)
    assert delivered_to(world) == ["carol@b.test"]


def test_a_shared_copy_opens_for_each_bound_recipient(world):
    world["b_lmtp"].start()
    try:
        sealed = capture(world, ["bob@b.test", "carol@b.test"], "bob@b.test, carol@b.test")
        t = smtp_transaction(world["b_lmtp"].inbound_port, "alice@a.test",
                             ["bob@b.test", "carol@b.test", "eve@b.test"], sealed, lmtp=True)
        assert [code for code, _ in t.data] == [250, 250, 550], t
        assert sorted(delivered_to(world)) == ["bob@b.test", "carol@b.test"]
    finally:
        world["b_lmtp"].stop()


def test_a_bundle_bound_to_nobody_opens_for_nobody(world, tmp_path):
    """Sealed by hand (mailseal seal without --to): the gateway refuses it."""
    from .conftest import run_cli

    card = tmp_path / "bob.card"
    card.write_text(world["b"].cli("keys", "export", "bob@b.test"))
    key = str(parse_cards(card.read_text())[0].recipient)
    sealed = run_cli("seal", "-r", key, "--no-bind", input=message("bob@b.test"))
    assert sealed.returncode == 0, sealed.stderr
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], sealed.stdout)
    assert t.data[0] == 550 and b"5.7.1" in t.data[1], t
    assert delivered_to(world) == []


def test_costly_opening_does_not_stall_other_clients(world):
    """A header of 600 hybrid stanzas means over a thousand key agreements: they run
    off the event loop, so another client is greeted and answered while the
    first waits for its reply."""
    import select
    import socket

    from mailseal import age
    from mailseal.addresses import parse_address
    from mailseal.keystore import MasterKeySource, SQLiteKeyStore

    state = world["b"].dir / "state"
    with SQLiteKeyStore(state / "keystore.sqlite3", MasterKeySource(file=state / "master.key")) as ks:
        bob = ks.identities_for(parse_address("bob@b.test"))[0].recipient()
    strangers = [age.generate().recipient() for _ in range(600)]  # near the 1 MiB header limit
    sealed = bundle.seal(message("bob@b.test"), [*strangers, bob], bind=["bob@b.test"], eol=b"\r\n")

    first = socket.create_connection(("127.0.0.1", world["b"].inbound_port), timeout=60)
    reader = first.makefile("rb")
    reader.readline()
    first.sendall(b"EHLO x\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n")
    while not reader.readline().startswith(b"354"):
        pass
    first.sendall(sealed + b".\r\n")
    sent = time.monotonic()
    # While it opens, a second client's commands are answered at once: the
    # slowest answer is a small part of the time the opening takes (a ratio
    # in one run, not a wall-clock bound). On the loop, one would wait it all.
    latencies = []
    with socket.create_connection(("127.0.0.1", world["b"].inbound_port), timeout=60) as second:
        second_reader = second.makefile("rb")
        assert second_reader.readline().startswith(b"220")
        while not select.select([first], [], [], 0)[0]:
            asked = time.monotonic()
            second.sendall(b"NOOP\r\n")
            assert second_reader.readline().startswith(b"250")
            latencies.append(time.monotonic() - asked)
    took = time.monotonic() - sent
    # On the loop, one answer waits nearly all of it (95% measured); off it,
    # even a busy machine answers in a small part of it.
    assert len(latencies) >= 3 and max(latencies) < took / 2, (latencies, took)
    reply = reader.readline()
    assert reply.startswith(b"250"), reply
    first.close()
    assert delivered_to(world) == ["bob@b.test"]
