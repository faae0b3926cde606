"""Really encrypted mail of each format, and clear mail dressed up as encrypted.

S/MIME comes from OpenSSL (through `cryptography`, and the `openssl cms`
command for AuthEnvelopedData); PGP/MIME is assembled from OpenPGP packets
(RFC 9580) so no gpg-agent is started.
"""

from __future__ import annotations

import base64
import datetime
import os
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

SECRET = b"the merger closes on friday"
SUBJECT = b"quarterly numbers"
INNER = b"From: alice@a.test\r\nTo: ceo@b.test\r\nSubject: " + SUBJECT + b"\r\n\r\n" + SECRET + b"\r\n"
# The outer header of every sample: the Subject in clear, as a careless sender leaves it.
TOP = b"From: alice@a.test\r\nTo: ceo@b.test\r\nSubject: " + SUBJECT + b"\r\nMessage-ID: <m1@a.test>\r\n"


class Certificates:
    def __init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ceo@b.test")])
        start = datetime.datetime(2026, 1, 1)
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_cert, self.ec_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650)).sign(k, hashes.SHA256())
            for k in (self.rsa_key, self.ec_key))


def _crlf(entity: bytes) -> bytes:
    return entity.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def smime_enveloped_der(certs: Certificates) -> bytes:
    return pkcs7.PKCS7EnvelopeBuilder().set_data(INNER).add_recipient(certs.rsa_cert).encrypt(
        serialization.Encoding.DER, [])


def smime_enveloped(certs: Certificates) -> bytes:
    entity = pkcs7.PKCS7EnvelopeBuilder().set_data(INNER).add_recipient(certs.rsa_cert).encrypt(
        serialization.Encoding.SMIME, [])
    return TOP + _crlf(entity)


def smime_auth_enveloped(certs: Certificates, tmp: Path) -> bytes:
    cert = tmp / "rcpt.pem"
    cert.write_bytes(certs.rsa_cert.public_bytes(serialization.Encoding.PEM))
    entity = subprocess.run(["openssl", "cms", "-encrypt", "-aes-256-gcm", "-recip", str(cert)], input=INNER,
                            capture_output=True, check=True, timeout=60).stdout
    assert b"authEnveloped-data" in entity
    return TOP + _crlf(entity)


def smime_signed_der(certs: Certificates) -> bytes:
    """Opaque signed-data: the content is inside, in clear."""
    return pkcs7.PKCS7SignatureBuilder().set_data(INNER).add_signer(certs.ec_cert, certs.ec_key,
                                                                    hashes.SHA256()).sign(
        serialization.Encoding.DER, [])


def pkcs7_mime(der: bytes, params: bytes = b"", head: bytes = b"") -> bytes:
    return (TOP + b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime" + params + b"\r\n" + head
            + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n"))


def _packet(tag: int, body: bytes) -> bytes:
    """A new-format OpenPGP packet (five-octet length)."""
    return bytes([0xC0 | tag, 255]) + len(body).to_bytes(4, "big") + body


def pgp_packets(encrypted: bool = True) -> bytes:
    if not encrypted:  # what `gpg --store` makes: a literal data packet, readable by anyone
        return _packet(11, b"b\x00\x00\x00\x00\x00" + INNER)
    pkesk = _packet(1, b"\x03" + os.urandom(8) + b"\x01" + (2048).to_bytes(2, "big") + os.urandom(256))
    seipd = _packet(18, b"\x01" + os.urandom(len(INNER) + 40))
    return pkesk + seipd


def armor(data: bytes) -> bytes:
    lines = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + lines + b"-----END PGP MESSAGE-----\r\n"


def pgp_mime(payload: bytes | None = None, head: bytes = b"") -> bytes:
    payload = armor(pgp_packets()) if payload is None else payload
    return (TOP + b"MIME-Version: 1.0\r\n" + head + b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b1"\r\n'
            b"\r\nThis is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
            b"--b1\r\nContent-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version "
            b"identification\r\n\r\nVersion: 1\r\n\r\n--b1\r\nContent-Type: application/octet-stream; "
            b'name="encrypted.asc"\r\n\r\n' + payload + b"\r\n--b1--\r\n")


def clear_dressed_up(certs: Certificates) -> dict[str, bytes]:
    """Mail that claims to be encrypted and is not verifiably so, one way each."""
    plain_body = b"\r\n" + SECRET + b"\r\n"
    return {
        "multipart-encrypted-label": TOP + b"Content-Type: multipart/encrypted\r\n" + plain_body,
        "multipart-encrypted-pgp-protocol": TOP + b'Content-Type: multipart/encrypted; '
                                            b'protocol="application/pgp-encrypted"; boundary=x\r\n' + plain_body,
        "pgp-armored-literal": pgp_mime(armor(pgp_packets(encrypted=False))),
        "pgp-armor-of-text": pgp_mime(b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + SECRET
                                      + b"\r\n-----END PGP MESSAGE-----\r\n"),
        "pkcs7-mime-no-smime-type": TOP + b"Content-Type: application/pkcs7-mime\r\n" + plain_body,
        "smime-signed-data": pkcs7_mime(smime_signed_der(certs)),
        "smime-signed-data-labelled-enveloped": pkcs7_mime(smime_signed_der(certs), b"; smime-type=enveloped-data"),
        "subject-says-encrypted": TOP.replace(b"Subject: ", b"Subject: encrypted (pkcs7-mime) ") + plain_body,
        # a real enveloped body, but which Content-Type counts depends on the reader
        "duplicated-content-type": pkcs7_mime(smime_enveloped_der(certs), b"; smime-type=enveloped-data",
                                              head=b"Content-Type: text/plain\r\n"),
        "duplicated-content-type-on-pgp": pgp_mime().replace(b'boundary="b1"\r\n',
                                                             b'boundary="b1"\r\nContent-Type: text/plain\r\n'),
    }
