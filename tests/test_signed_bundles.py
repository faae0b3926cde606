"""Signed bundles (FORMAT.md section 2.3), attacked by a co-recipient who holds the file key."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mailseal import age, bundle, signing

from .conftest import run_cli
from .vectors.make_vectors import IDENTITY, OTHER, decoded, encode_header, replace_part

MESSAGE = b"From: ceo@a.test\r\nTo: bob@b.test, carol@c.test\r\nSubject: pay\r\n\r\nPay 100 to Bob.\r\n" * 3
KEY = signing.generate(signing.HYBRID)


def signed(message: bytes = MESSAGE, key: signing.SigningKey = KEY) -> bytes:
    return bundle.seal(message, [IDENTITY.recipient(), OTHER.recipient()], bind=["bob@b.test", "carol@c.test"],
                       signer=("a.test", key))


def check(data: bytes, keys=(KEY.public(),), identity=IDENTITY, rcpt="bob@b.test") -> str:
    opened = bundle.open_sealed(data, [identity], rcpt)
    return bundle.UNSIGNED if opened.signature is None else opened.signature.check(list(keys))


def as_co_recipient(data: bytes, edit) -> bytes:
    """Carol (OTHER) rebuilds the header with the file key she unwrapped."""
    header = age.parse_header(decoded(data, 0))
    file_key = age.unwrap_file_key(header, [OTHER])
    return replace_part(data, 0, encode_header(edit(list(header.stanzas), file_key), file_key))


def test_a_signed_bundle_verifies_and_names_its_signer():
    opened = bundle.open_sealed(signed(), [IDENTITY], "bob@b.test")
    assert opened.message == MESSAGE
    assert (opened.signature.signer, opened.signature.kind) == ("a.test", signing.HYBRID)
    assert opened.signature.check([KEY.public()]) == bundle.SIGNED
    assert opened.signature.check([signing.generate().public()]) == bundle.INVALID
    assert opened.signature.check([]) == bundle.SIGNER_UNKNOWN


def test_ed25519_signature_is_refused_by_a_composite_key():
    """A downgrade: the signer's key is composite, the signature Ed25519 only."""
    ed_only = signing.SigningKey(signing.ED25519, KEY.ed25519)
    assert check(signed(key=ed_only), keys=[KEY.public()]) == bundle.INVALID
    assert check(signed(key=ed_only), keys=[ed_only.public()]) == bundle.SIGNED


def test_co_recipient_cannot_rebind_the_message_to_someone_else():
    def rebind(stanzas, file_key):
        return [bundle.bind_stanza(file_key, ["bob@b.test", "dave@b.test"]) if s.type == bundle.BIND_STANZA else s
                for s in stanzas]
    forged = as_co_recipient(signed(), rebind)
    assert check(forged, rcpt="bob@b.test") == bundle.INVALID


def test_co_recipient_cannot_change_the_date_or_serial():
    def redate(stanzas, _key):
        return [bundle.replay_stanza(int(s.args[0]) + 60, s.args[1]) if s.type == bundle.REPLAY_STANZA else s
                for s in stanzas]
    forged = as_co_recipient(signed(), redate)
    forged = forged.replace(b"Mailseal-Date: ", b"X-Old: ", 1)
    date = int([s for s in age.parse_header(decoded(forged, 0)).stanzas if s.type == bundle.REPLAY_STANZA][0].args[0])
    forged = forged.replace(b"X-Old: ", b"Mailseal-Date: " + bundle._rfc5322_date(date) + b"\r\nX-Old: ", 1)
    assert check(forged) == bundle.INVALID


def test_co_recipient_stripping_the_signature_leaves_it_unsigned_not_signed_by_another():
    forged = as_co_recipient(signed(), lambda st, _k: [s for s in st if s.type != bundle.SIG_STANZA])
    assert check(forged) == bundle.UNSIGNED


def test_a_second_sig_stanza_is_malformed():
    def twice(stanzas, _key):
        sig = next(s for s in stanzas if s.type == bundle.SIG_STANZA)
        return [*stanzas, sig]
    with pytest.raises(bundle.MalformedBundle):
        check(as_co_recipient(signed(), twice))


def test_large_signed_message_streams_and_verifies():
    big = MESSAGE + b"x" * (3 * 64 * 1024 * 57 + 12345)  # several payload segments
    assert check(signed(big)) == bundle.SIGNED


@pytest.mark.skipif(shutil.which("age") is None, reason="the age command is not installed")
def test_stock_age_decrypts_a_signed_bundle(tmp_path):
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(str(IDENTITY) + "\n")
    out = subprocess.run(["age", "-d", "-i", str(keyfile)], input=bundle.age_file(signed()), capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == MESSAGE


def test_seal_sign_and_open_verify_offline(tmp_path):
    """mailseal seal --sign KEYFILE / open --verify CARD; a broken signature exits 1."""
    from mailseal import signing
    from mailseal.keystore import KeyRecord, render_card

    ident = tmp_path / "id.txt"
    assert run_cli("keygen", "-o", str(ident)).returncode == 0
    recipient = [line for line in ident.read_text().splitlines() if "public key:" in line][0].split(": ")[1]
    signer = tmp_path / "sign.key"
    assert run_cli("keygen", "--signing", "hybrid", "-o", str(signer)).returncode == 0
    key = signing.parse_signing_key(signer.read_text().splitlines()[1])
    public = str(key.public())
    from mailseal.keystore import fingerprint

    card = tmp_path / "a.card"
    card.write_text(render_card(KeyRecord(0, "remote", "@a.test", "ed25519+mldsa65", public, fingerprint(public),
                                          "", "", 0, None, None, None, None)))
    msg = b"From: ceo@a.test\nTo: bob@b.test\n\nhello\n"
    sealed = run_cli("seal", "-r", recipient, "--sign", str(signer), input=msg)
    assert sealed.returncode == 0, sealed.stderr
    opened = run_cli("open", "-i", str(ident), "--verify", str(card), input=sealed.stdout)
    assert opened.returncode == 0 and opened.stdout == msg
    assert b"signed-by=a.test (hybrid)" in opened.stderr
    other = tmp_path / "other.key"
    run_cli("keygen", "--signing", "hybrid", "-o", str(other))
    forged = run_cli("seal", "-r", recipient, "--sign", str(other), input=msg)
    bad = run_cli("open", "-i", str(ident), "--verify", str(card), input=forged.stdout)
    assert bad.returncode == 1 and b"signature-invalid" in bad.stderr
    unsigned = run_cli("seal", "-r", recipient, input=msg)
    plain = run_cli("open", "-i", str(ident), "--verify", str(card), input=unsigned.stdout)
    assert plain.returncode == 0 and b"unsigned" in plain.stderr


def test_replay_tag_holds_for_a_re_maced_copy_and_differs_for_a_serial_squatter():
    """The replay claim's key beside the serial: a co-recipient who moves the
    sig stanza (a new header MAC, the signature still valid) re-delivers the
    same message, so the tag is the same; a squatter's own bundle with the
    copied serial gets another tag, so it cannot pre-empt the real one."""
    data = signed()
    moved = as_co_recipient(data, lambda st, key: [st[-1], *st[:-1]])
    original = bundle.open_sealed(data, [IDENTITY], "bob@b.test")
    again = bundle.open_sealed(moved, [IDENTITY], "bob@b.test")
    assert again.signature.check([KEY.public()]) == bundle.SIGNED
    assert decoded(moved, 0) != decoded(data, 0)
    assert (again.serial, again.tag) == (original.serial, original.tag)

    draws = iter([bytes.fromhex(original.serial)])  # the serial is sealing's first draw

    def rng(n: int) -> bytes:
        return next(draws, None) or os.urandom(n)

    squat = bundle.seal(b"From: x@evil.test\r\n\r\njunk\r\n", [IDENTITY.recipient()], bind=["bob@b.test"],
                        now=original.date, rng=rng)
    squatted = bundle.open_sealed(squat, [IDENTITY], "bob@b.test")
    assert (squatted.serial, squatted.date) == (original.serial, original.date)
    assert squatted.tag != original.tag
