"""encrypted.verify: real encryption is recognised by its structure; labels,
subjects and duplicated fields never make clear mail count as encrypted."""

from __future__ import annotations

import pytest

from mailseal import age, bundle, encrypted

from . import encrypted_samples as samples
from .corpus import MESSAGES


@pytest.fixture(scope="module")
def certs():
    return samples.Certificates()


def test_a_mailseal_bundle_is_verified():
    sealed = bundle.seal(samples.INNER, [age.generate().recipient()])
    assert encrypted.verify(sealed) == encrypted.MAILSEAL
    # a bundle cut short is not one
    assert encrypted.verify(sealed[: len(sealed) // 2]) is None


def test_pgp_mime_is_verified_by_its_packets():
    assert encrypted.verify(samples.pgp_mime()) == encrypted.PGP_MIME
    # LF line ends, a checksum line and armor headers are all fine
    message = samples.pgp_mime(samples.armor(samples.pgp_packets()).replace(
        b"-----\r\n\r\n", b"-----\r\nVersion: GnuPG v2\r\n\r\n").replace(
        b"-----END", b"=njUN\r\n-----END")).replace(b"\r\n", b"\n")
    assert encrypted.verify(message) == encrypted.PGP_MIME


def test_smime_enveloped_and_auth_enveloped_are_verified_by_their_oid(certs, tmp_path):
    assert encrypted.verify(samples.smime_enveloped(certs)) == encrypted.SMIME
    assert encrypted.verify(samples.smime_auth_enveloped(certs, tmp_path)) == encrypted.SMIME
    # the smime-type label is not what decides: without it, the DER still says EnvelopedData
    assert encrypted.verify(samples.pkcs7_mime(samples.smime_enveloped_der(certs))) == encrypted.SMIME


@pytest.mark.parametrize("name", ["multipart-encrypted-label", "multipart-encrypted-pgp-protocol",
                                  "pgp-armored-literal", "pgp-armor-of-text", "pkcs7-mime-no-smime-type",
                                  "smime-signed-data", "smime-signed-data-labelled-enveloped",
                                  "subject-says-encrypted", "duplicated-content-type",
                                  "duplicated-content-type-on-pgp"])
def test_mail_that_only_claims_to_be_encrypted_is_not_verified(certs, name):
    assert encrypted.verify(samples.clear_dressed_up(certs)[name]) is None


def test_damaged_structures_are_not_verified(certs):
    der = samples.smime_enveloped_der(certs)
    assert encrypted.verify(samples.pkcs7_mime(der + b"plaintext appended")) is None
    assert encrypted.verify(samples.pkcs7_mime(der[:-10])) is None
    not_base64 = samples.pkcs7_mime(der).replace(b"Content-Transfer-Encoding: base64",
                                                  b"Content-Transfer-Encoding: quoted-printable")
    assert encrypted.verify(not_base64) is None
    three_parts = samples.pgp_mime().replace(b"--b1--", b"--b1\r\n\r\nmore\r\n--b1--")
    assert encrypted.verify(three_parts) is None
    no_version = samples.pgp_mime().replace(b"Version: 1", b"Version: 2")
    assert encrypted.verify(no_version) is None
    session_key_only = samples.pgp_mime(samples.armor(samples.pgp_packets()[:260]))
    assert encrypted.verify(session_key_only) is None
    text_after_armor = samples.pgp_mime(samples.armor(samples.pgp_packets()) + samples.SECRET + b"\r\n")
    assert encrypted.verify(text_after_armor) is None
    # the corpus' placeholder PGP message has no armored packets at all
    assert encrypted.verify(MESSAGES["ALREADY_PGP"]) is None


def test_everyday_mail_is_decided_without_parsing():
    for name in ("CRLF_PLAIN", "NESTED_MULTIPART", "EMPTY_BODY", "FOLDED_HEADERS"):
        assert encrypted.verify(MESSAGES[name]) is None


def test_hostile_bytes_never_raise(certs):
    import random

    # 8-bit bytes in an unbalanced parameter: the email package's parser raised UnicodeEncodeError
    eight_bit = b'From: a@a.test\r\nContent-Type: multipart/encrypted; protocol="application/pgp-\xe8\x86\xab\xff\r\n\r\nx\r\n'

    assert encrypted.verify(eight_bit) is None
    bases = [samples.smime_enveloped(certs), samples.pgp_mime(), *samples.clear_dressed_up(certs).values()]
    rng = random.Random(8)
    for _ in range(400):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[pos] = rng.randrange(256)
            else:
                del data[pos : pos + rng.randint(1, 40)]
        assert encrypted.verify(bytes(data)) in (None, encrypted.SMIME, encrypted.PGP_MIME)
