"""Sender authenticity through two gateways: A signs, B verifies and applies
its inbound policy per sending domain. Written as the attacker where it counts."""

from __future__ import annotations

import pytest

from mailseal import bundle, signing
from mailseal.keystore import fingerprint, parse_cards

from .harness import Daemon, Sink, free_port, smtp_transaction, wait_for_port

BODY = b"wire 1,000,000 to account 42"


def message(sender: str = "ceo@a.test", to: str = "bob@b.test") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: s\r\n\r\n".encode() + BODY + b"\r\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("senderauth")
    with Sink() as final, Sink() as wire:
        b = Daemon(root / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        b.cli("keys", "generate", "@b.test")
        forward_port = free_port()
        a = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}",
                                         "forward_listen": f"127.0.0.1:{forward_port}"})
        a.cli("keys", "generate", "@a.test")
        (root / "b.card").write_text(b.cli("keys", "export", "@b.test"))
        (root / "a.card").write_text(a.cli("keys", "export", "@a.test"))
        a.cli("keys", "import", "@b.test", str(root / "b.card"))
        b.cli("keys", "import", "@a.test", str(root / "a.card"))
        b_key = parse_cards((root / "b.card").read_text())[0].recipient
        for daemon in (a, b):
            daemon.start()
        wait_for_port(forward_port)
        try:
            yield {"a": a, "b": b, "final": final, "wire": wire, "b_key": b_key, "root": root,
                   "a_forward": forward_port}
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


# --- the claimed sender: every From: mailbox, from the whole header block -------------

BARE = b"To: bob@b.test\r\nSubject: pay\r\n"
PLAIN_BODY = b"\r\n" + BODY + b"\r\n"
# Each names ceo@a.test to some reader; none may escape a.test's policy.
DISGUISED_FROM = {
    "quoted local part": b'From: CEO <"ceo"@a.test>\r\n' + BARE,
    "trailing dot": b"From: CEO <ceo@a.test.>\r\n" + BARE,
    "leading continuation line": b" x\r\nFrom: CEO <ceo@a.test>\r\n" + BARE,
    "line without a colon": b"From: CEO <ceo@a.test>\r\n" + BARE + b"x\r\n",
    "nested angle brackets": b"From: <<ceo@a.test>>\r\n" + BARE,
    "encoded word only": b"From: =?utf-8?q?ceo=40a=2Etest?=\r\n" + BARE,
    "hidden behind a bare CR": b"X-A: b\rFrom: ceo@a.test\r\n" + BARE,
    "empty group first": b"From: undisclosed:;, ceo@a.test\r\n" + BARE,
    "no From, only Sender": b"Sender: ceo@a.test\r\n" + BARE,
    "second mailbox": b"From: x@evil.test, ceo@a.test\r\n" + BARE,
    "second From field": b"From: x@evil.test\r\nFrom: ceo@a.test\r\n" + BARE,
}


def outsider_sealed(world, plaintext: bytes) -> bytes:
    return bundle.seal(plaintext, [world["b_key"]], bind=["bob@b.test"])  # B's key is public


@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed-unsigned"])
@pytest.mark.parametrize("name", DISGUISED_FROM)
def test_a_disguised_from_never_escapes_the_senders_policy(world, name, sealed):
    world["b"].cli("policy", "set", "--inbound", "@a.test", "signed")
    plaintext = DISGUISED_FROM[name] + PLAIN_BODY
    refused(world, to_b(world, outsider_sealed(world, plaintext) if sealed else plaintext,
                        mail_from="x@evil.test"), b"5.7.1")


def test_an_unclear_sender_is_delivered_marked_when_every_policy_is_any(world):
    plaintext = DISGUISED_FROM["no From, only Sender"] + PLAIN_BODY
    assert to_b(world, outsider_sealed(world, plaintext), mail_from="x@evil.test").data[0] == 250
    assert status(delivered(world)).startswith(b"Mailseal-Status: opened; unsigned; sender-unclear; serial=")
    assert to_b(world, plaintext, mail_from="x@evil.test").data[0] == 250
    assert status(delivered(world)) == b"Mailseal-Status: clear; sender-unclear"
    world["b"].cli("policy", "set", "--inbound", "@c.test", "sealed")  # any policy stricter than `any`
    refused(world, to_b(world, plaintext, mail_from="x@evil.test"), b"5.7.1")
    assert "refused:sender-unclear" in world["b"].log_text()


def test_every_from_mailbox_must_be_the_signers(world):
    # A signs as a.test; the second mailbox is another domain's.
    sealed = through_a(world, b"From: ceo@a.test, x@c.test\r\n" + BARE + PLAIN_BODY)
    refused(world, to_b(world, sealed), b"5.7.7")


def header_padding(size: int) -> bytes:
    lines = [b"X-Pad-%05d: %s\r\n" % (i, b"p" * 900) for i in range(size // 900 + 1)]
    return b"".join(lines)


def test_a_from_after_64_kib_of_header_is_judged(world):
    world["b"].cli("policy", "set", "--inbound", "@a.test", "signed")
    plaintext = BARE + header_padding(70 * 1024) + b"From: ceo@a.test\r\n" + PLAIN_BODY
    refused(world, to_b(world, outsider_sealed(world, plaintext), mail_from="x@evil.test"), b"5.7.1")
    assert "refused:unsigned" in world["b"].log_text()


def test_a_first_chunk_ending_in_a_display_name_does_not_pick_the_sender(world):
    # A partner's user (c.test, really signed by c.test) whose first 64 KiB
    # chunk ends inside `From: "x@c.test` ...`: the address is ceo@a.test.
    c_key = signing.generate()
    import_signing_key(world, c_key, "@c.test")
    head = BARE + header_padding(60 * 1024)
    cut = b'From: "x@c.test'
    head += b"X-Fill: " + b"f" * (65536 - len(head) - len(cut) - 10) + b"\r\n"
    plaintext = head + cut + b'" <ceo@a.test>\r\n' + PLAIN_BODY
    assert plaintext[:65536].endswith(cut)
    sealed = bundle.seal(plaintext, [world["b_key"]], bind=["bob@b.test"], signer=("c.test", c_key))
    refused(world, to_b(world, sealed, mail_from="x@c.test"), b"5.7.7")
    assert "refused:signer-mismatch" in world["b"].log_text()


def test_a_header_block_over_the_limit_leaves_the_sender_unclear(world):
    world["b"].cli("policy", "set", "--inbound", "@a.test", "signed")
    plaintext = b"From: x@evil.test\r\n" + BARE + header_padding(300 * 1024) + PLAIN_BODY
    refused(world, to_b(world, outsider_sealed(world, plaintext), mail_from="x@evil.test"), b"5.7.1")
    assert "refused:sender-unclear" in world["b"].log_text()


# --- the signer's keys: downgrade and revocation ---------------------------------------

def test_an_ed25519_signature_is_refused_when_a_composite_key_is_on_file(world):
    composite, old = signing.generate(), signing.generate(signing.ED25519)
    for key in (composite, old):  # the partner upgraded; the old card was never revoked
        import_signing_key(world, key, "@d.test")
    plaintext = message(sender="ceo@d.test")
    for policy in ("any", "signed"):
        world["b"].cli("policy", "set", "--inbound", "@d.test", policy)
        sealed = bundle.seal(plaintext, [world["b_key"]], bind=["bob@b.test"], signer=("d.test", old))
        refused(world, to_b(world, sealed, mail_from="ceo@d.test"), b"5.7.7")
    assert "refused:signature-downgrade" in world["b"].log_text()
    sealed = bundle.seal(plaintext, [world["b_key"]], bind=["bob@b.test"], signer=("d.test", composite))
    assert to_b(world, sealed, mail_from="ceo@d.test").data[0] == 250
    assert b"signed-by=d.test (hybrid)" in status(delivered(world))
    world["b"].cli("policy", "unset", "--inbound", "@d.test")


def test_a_signature_by_a_revoked_key_is_refused_under_every_policy(world):
    key = signing.generate()
    import_signing_key(world, key, "@e.test")  # e.test's only key, soon revoked
    world["b"].cli("keys", "revoke", fingerprint(str(key.public())))
    for policy in ("any", "sealed", "signed"):
        world["b"].cli("policy", "set", "--inbound", "@e.test", policy)
        sealed = bundle.seal(message(sender="ceo@e.test"), [world["b_key"]], bind=["bob@b.test"],
                             signer=("e.test", key))
        refused(world, to_b(world, sealed, mail_from="ceo@e.test"), b"5.7.7")
    assert "refused:signer-key-revoked" in world["b"].log_text()
    world["b"].cli("policy", "unset", "--inbound", "@e.test")


# --- the envelope sender ------------------------------------------------------------

@pytest.mark.parametrize("mail_from", ['"x y"@evil.test', "x@[127.0.0.1]"])
def test_an_unparseable_envelope_sender_of_signed_mail_is_refused(world, mail_from):
    refused(world, to_b(world, through_a(world, message()), mail_from=mail_from), b"5.7.7")


def test_a_null_envelope_sender_is_judged_by_from_alone(world):
    # Bounces are <>: the signature still binds the From: domain.
    assert to_b(world, through_a(world, message()), mail_from="").data[0] == 250
    assert b"signed-by=a.test (hybrid)" in status(delivered(world))
    sealed = through_a(world, message(sender="ceo@c.test"))
    refused(world, to_b(world, sealed, mail_from=""), b"5.7.7")



# --- the log line ---------------------------------------------------------------------

def test_control_characters_in_message_id_never_reach_the_log_raw(world):
    forged_line = b"INFO mailseal.gateway: 000000000000 inbound from=<ceo@a.test> decision=opened"
    plaintext = (b"From: x@evil.test\r\nTo: bob@b.test\r\nMessage-ID: <a\x1b[2K\x1b[1G" + forged_line
                 + b"\x1b[8m>\r\n\r\nbody\r\n")
    assert to_b(world, plaintext, mail_from="x@evil.test").data[0] == 250
    world["final"].wait(1)
    log_text = world["b"].log_text()
    assert "\x1b" not in log_text
    assert "<a\\x1b[2K\\x1b[1GINFO mailseal.gateway" in log_text  # escaped, as one field


# --- what A signs -------------------------------------------------------------------

def test_the_forward_listener_seals_but_never_signs(world):
    # An outsider's MAIL FROM:<ceo@a.test>, forwarded by an a.test alias (Postfix
    # re-injects it to forward_listen): sealed for B, but not in a.test's name.
    t = smtp_transaction(world["a_forward"], "ceo@a.test", ["bob@b.test"], message())
    assert t.data[0] == 250, t
    [sealed] = world["wire"].wait(1)
    world["wire"].messages.clear()
    assert b"multipart/encrypted" in sealed.data and BODY not in sealed.data
    assert to_b(world, sealed.data).data[0] == 250
    assert status(delivered(world)).startswith(b"Mailseal-Status: opened; unsigned; ")
    world["b"].cli("policy", "set", "--inbound", "@a.test", "signed")
    refused(world, to_b(world, sealed.data), b"5.7.1")


def test_forward_listen_is_a_listener_of_its_own(tmp_path):
    from mailseal import config as config_mod

    def outbound(**values):
        return config_mod.from_dict({"outbound": values}, tmp_path).outbound

    assert outbound().forward_listen is None  # off unless configured
    assert outbound(forward_listen="127.0.0.1:10029").forward_listen.port == 10029
    with pytest.raises(config_mod.ConfigError, match=r"\[outbound\] forward_listen: must differ"):
        outbound(listen="127.0.0.1:10025", forward_listen="127.0.0.1:10025")
