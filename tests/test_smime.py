"""S/MIME copies: made by us, opened by OpenSSL; made by OpenSSL, opened by us."""

from __future__ import annotations

import email
import subprocess
from email import policy

import pytest

from mailseal import mime, protect, smime
from mailseal.partner_errors import MalformedMessage, NoKeyMatch, NotThisFormat, Tampered, UnsupportedKey
from tests.partner_keys import MESSAGES, ec_certificate, rsa_identity, write_pem


@pytest.fixture(scope="module")
def bob() -> smime.Identity:
    return rsa_identity("bob@b.test")


@pytest.fixture(scope="module")
def carol() -> smime.Identity:
    return rsa_identity("carol@b.test", bits=3072)


def _openssl(*args: str, input: bytes) -> bytes:
    done = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.mark.parametrize("name", sorted(MESSAGES))
@pytest.mark.parametrize("tool", ["cms", "smime"])
def test_every_copy_decrypts_with_openssl_byte_exact(tmp_path, bob, carol, name, tool):
    message = MESSAGES[name]
    sealed = smime.seal(message, [bob.certificate, carol.certificate], now=1_767_000_000)
    for who, stem in ((bob, "bob"), (carol, "carol")):
        cert, key = write_pem(who, tmp_path, stem)
        inner = _openssl(tool, "-decrypt", "-binary", "-recip", str(cert), "-inkey", str(key), input=sealed)
        assert inner == protect.wrap(message)
        assert protect.unwrap(inner) == message


def test_outer_message_keeps_routing_fields_and_hides_the_rest(bob):
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate], now=1_767_000_000)
    outer = email.message_from_bytes(sealed, policy=policy.default)
    assert outer["Subject"] == "[...]"
    assert outer["From"] == "Alice <alice@a.test>" and outer["To"] == "Bob <bob@b.test>"
    assert outer["Message-ID"] == "<m1@a.test>" and outer["Date"] == "Mon, 02 Mar 2026 10:00:00 +0000"
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert b"merger" not in sealed and b"caf" not in sealed
    head, _ = mime.split_head(sealed)
    assert all(len(line) <= 78 for line in sealed.split(b"\r\n"))
    assert b"\r\n" in head and b"\n" not in head.replace(b"\r\n", b"")


def test_inner_declares_header_protection(bob):
    opened = smime.open_message(smime.seal(MESSAGES["no-content-type"], [bob.certificate]), [bob])
    assert opened.message == MESSAGES["no-content-type"]
    wrapped = protect.wrap(MESSAGES["no-content-type"])
    assert mime.Headers(mime.split_head(wrapped)[0]).param("hp") == "cipher"


@pytest.mark.parametrize("tool", ["cms", "smime"])
def test_mail_encrypted_by_openssl_opens(tmp_path, bob, tool):
    cert, _ = write_pem(bob, tmp_path, "bob")
    message = MESSAGES["plain"]
    sealed = _openssl(tool, "-encrypt", "-aes256", "-binary", "-from", "alice@a.test", "-to", "bob@b.test",
                      "-subject", "[...]", str(cert), input=message)
    opened = smime.open_message(sealed, [rsa_identity("x@b.test"), bob])
    assert opened.message == message
    assert opened.identity is bob


def test_each_recipient_opens_with_its_own_key(bob, carol):
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate, carol.certificate])
    assert smime.open_message(sealed, [carol]).identity is carol
    assert smime.open_message(sealed, [bob]).message == MESSAGES["plain"]


def _with_der(sealed: bytes, der: bytes) -> bytes:
    head, body_at = mime.split_head(sealed)
    return sealed[:body_at] + b"".join(mime.base64_lines(der, b"\r\n"))


def test_wrong_key_is_no_match(bob, carol):
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate])
    with pytest.raises(NoKeyMatch):
        smime.open_message(sealed, [carol])


def test_tampered_last_block_is_refused(bob):
    sealed = smime.seal(MESSAGES["no-content-type"], [bob.certificate])
    der = bytearray(smime.enveloped_data(sealed))
    der[-1] ^= 0x01  # the padding of the last cipher block
    with pytest.raises(Tampered):
        smime.open_message(_with_der(sealed, bytes(der)), [bob])


@pytest.mark.parametrize("cut", [1, 16, 200])
def test_truncated_is_refused(bob, cut):
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate])
    der = smime.enveloped_data(sealed)
    with pytest.raises(MalformedMessage):
        smime.open_message(_with_der(sealed, der[:-cut]), [bob])


def test_truncated_base64_is_refused(bob):
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate])
    with pytest.raises(MalformedMessage):
        smime.open_message(sealed[:-7], [bob])


def test_plain_mail_is_not_smime_and_a_label_alone_is_malformed(bob):
    with pytest.raises(NotThisFormat):
        smime.open_message(MESSAGES["plain"], [bob])
    forged = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nhello\r\n"
    with pytest.raises(MalformedMessage):
        smime.open_message(forged, [bob])


def test_weak_and_ec_certificates_are_refused():
    with pytest.raises(UnsupportedKey, match="1024 bits"):
        smime.check_certificate(rsa_identity("weak@b.test", bits=1024).certificate)
    with pytest.raises(UnsupportedKey, match="RFC 5753"):
        smime.check_certificate(ec_certificate("ec@b.test"))
    with pytest.raises(UnsupportedKey):
        smime.seal(MESSAGES["plain"], [ec_certificate("ec@b.test")])


def test_certificates_load_from_pem_and_der(bob):
    from cryptography.hazmat.primitives import serialization

    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        assert smime.load_certificate(bob.certificate.public_bytes(encoding)) == bob.certificate
    with pytest.raises(MalformedMessage):
        smime.load_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_expiry_is_told(bob):
    assert not smime.expired(bob.certificate)
    assert smime.expired(bob.certificate, now=bob.certificate.not_valid_after_utc.timestamp() + 1)
    assert smime.expired(bob.certificate, now=bob.certificate.not_valid_before_utc.timestamp() - 1)


def test_pkcs12_import(tmp_path, bob):
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    p12 = pkcs12.serialize_key_and_certificates(b"bob", bob.private_key, bob.certificate, None,
                                                BestAvailableEncryption(b"pw"))
    identity = smime.load_pkcs12(p12, b"pw")
    assert identity.certificate == bob.certificate
    with pytest.raises(MalformedMessage):
        smime.load_pkcs12(p12, b"wrong")
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate])
    assert smime.open_message(sealed, [identity]).message == MESSAGES["plain"]
