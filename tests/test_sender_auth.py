"""Sender authenticity through two gateways: A signs, B verifies and applies
its inbound policy per sending domain. Written as the attacker where it counts."""

from __future__ import annotations

import pytest

from mailseal import bundle, signing
from mailseal.keystore import fingerprint, parse_cards

from .harness import Daemon, Sink, smtp_transaction

BODY = b"wire 1,000,000 to account 42"


def message(sender: str = "ceo@a.test", to: str = "bob@b.test") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: s\r\n\r\n".encode() + BODY + b"\r\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("senderauth")
    with Sink() as final, Sink() as wire:
        b = Daemon(root / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        b.cli("keys", "generate", "@b.test")
        a = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"})
        a.cli("keys", "generate", "@a.test")
        (root / "b.card").write_text(b.cli("keys", "export", "@b.test"))
        (root / "a.card").write_text(a.cli("keys", "export", "@a.test"))
        a.cli("keys", "import", "@b.test", str(root / "b.card"))
        b.cli("keys", "import", "@a.test", str(root / "a.card"))
        b_key = parse_cards((root / "b.card").read_text())[0].recipient
        for daemon in (a, b):
            daemon.start()
        try:
            yield {"a": a, "b": b, "final": final, "wire": wire, "b_key": b_key, "root": root}
        finally:
            for daemon in (a, b):
                daemon.stop()


@pytest.fixture(autouse=True)
def clean(world):
    world["final"].messages.clear()
    world["wire"].messages.clear()
    yield
    for owner in ("@a.test", "@c.test"):
        world["b"].cli("policy", "set", "--inbound", owner, "any")


def through_a(world, data: bytes, mail_from: str = "ceo@a.test") -> bytes:
    t = smtp_transaction(world["a"].outbound_port, mail_from, ["bob@b.test"], data)
    assert t.data[0] == 250, t
    [sealed] = world["wire"].wait(1)
    world["wire"].messages.clear()
    return sealed.data


def to_b(world, sealed: bytes, mail_from: str = "ceo@a.test"):
    return smtp_transaction(world["b"].inbound_port, mail_from, ["bob@b.test"], sealed)


def delivered(world) -> bytes:
    [got] = world["final"].wait(1)
    world["final"].messages.clear()
    assert BODY in got.data
    return got.data


def status(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


def refused(world, t, code: bytes = b"5.7."):
    assert t.data[0] == 550 and t.data[1].startswith(code), t
    assert not any(BODY in m.data for m in world["final"].messages)


def offline(world, key: signing.SigningKey, signer: str = "a.test", sender: str = "ceo@a.test") -> bytes:
    return bundle.seal(message(sender), [world["b_key"]], bind=["bob@b.test"], signer=(signer, key))


def import_signing_key(world, key: signing.SigningKey, owner: str = "@a.test") -> None:
    world["b"].cli("keys", "import", owner, str(key.public()))


def test_signed_mail_opens_with_signed_by(world):
    sealed = through_a(world, message())
    assert to_b(world, sealed).data[0] == 250
    assert status(delivered(world)).startswith(b"Mailseal-Status: opened; signed-by=a.test (hybrid); serial=")


def test_outsider_sealed_is_unsigned_under_any_and_refused_under_signed(world):
    forged = bundle.seal(message(), [world["b_key"]], bind=["bob@b.test"])  # B's key is public
    assert to_b(world, forged).data[0] == 250
    assert status(delivered(world)).startswith(b"Mailseal-Status: opened; unsigned; ")
    world["b"].cli("policy", "set", "--inbound", "@a.test", "signed")
    forged = bundle.seal(message(), [world["b_key"]], bind=["bob@b.test"])
    refused(world, to_b(world, forged), b"5.7.1")
    assert "refused:unsigned" in world["b"].log_text()


def test_clear_mail_from_a_sealed_sender_is_refused(world):
    world["b"].cli("policy", "set", "--inbound", "@a.test", "sealed")
    refused(world, to_b(world, message()), b"5.7.1")
    assert "refused:not-sealed" in world["b"].log_text()
    world["b"].cli("policy", "set", "--inbound", "@a.test", "any")
    assert to_b(world, message()).data[0] == 250
    delivered(world)


def test_a_signature_by_a_test_on_mail_from_c_test_is_refused(world):
    sealed = through_a(world, message(sender="ceo@c.test"))  # A signs as a.test
    refused(world, to_b(world, sealed), b"5.7.7")
    assert "refused:signer-mismatch" in world["b"].log_text()


def test_envelope_sender_of_another_domain_is_refused(world):
    sealed = through_a(world, message())
    refused(world, to_b(world, sealed, mail_from="bounce@c.test"), b"5.7.7")


@pytest.mark.parametrize("broken", ["Ed25519", "ML-DSA-65"])
def test_each_half_of_the_composite_broken_alone_is_refused(world, broken):
    real = signing.generate()
    import_signing_key(world, real)
    other = signing.generate()
    # The attacker forged one algorithm (here: has another key for it) but not the other.
    half = (signing.SigningKey(signing.HYBRID, other.ed25519, real.mldsa) if broken == "Ed25519"
            else signing.SigningKey(signing.HYBRID, real.ed25519, other.mldsa))
    refused(world, to_b(world, offline(world, half)), b"5.7.7")
    assert to_b(world, offline(world, real)).data[0] == 250  # the same key, whole, verifies
    assert b"signed-by=a.test (hybrid)" in status(delivered(world))


def test_a_revoked_signing_key_is_refused(world):
    key = signing.generate()
    import_signing_key(world, key)
    world["b"].cli("policy", "set", "--inbound", "@a.test", "signed")
    assert to_b(world, offline(world, key)).data[0] == 250
    delivered(world)
    world["b"].cli("keys", "revoke", fingerprint(str(key.public())))
    refused(world, to_b(world, offline(world, key)), b"5.7.7")


def test_rotation_overlap_old_and_new_keys_verify(world):
    before = through_a(world, message())  # signed with A's current key
    world["a"].cli("keys", "rotate", "@a.test")
    card = world["root"] / "a-rotated.card"
    card.write_text(world["a"].cli("keys", "export", "@a.test"))
    new_signing = [c for c in parse_cards(card.read_text()) if isinstance(c.recipient, signing.VerifyKey)]
    world["b"].cli("keys", "import", "@a.test", str(new_signing[0].recipient))
    after = through_a(world, message())
    # both travel in the overlap:
    for sealed in (before, after):
        assert to_b(world, sealed).data[0] == 250
        assert b"signed-by=a.test (hybrid)" in status(delivered(world))
