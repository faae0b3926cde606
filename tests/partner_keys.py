"""Test keys and messages for the S/MIME and OpenPGP copies (tests only).

RSA certificates are made with cryptography, OpenPGP keys with pysequoia in
the RFC 4880 profile (v4 keys, what GnuPG 2.2 reads); a GnuPG home for the
real `gpg` is made per test and its agent stopped afterwards.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pysequoia
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mailseal import smime

MESSAGES = {
    "plain": (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: the merger\r\n"
              b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <m1@a.test>\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
              + "caf\u00e9 numbers: 42\r\n".encode() * 50),
    "no-content-type": b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: short\r\n\r\nhi\r\n",
    "multipart": (b"From: alice@a.test\r\nTo: bob@b.test\r\nCc: carol@c.test\r\nSubject: files\r\n"
                  b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n\r\n"
                  b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                  b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                  + b"QUJD\r\n" * 20000 + b"--b1--\r\n"),  # about 120 KB
}


def rsa_identity(name: str, bits: int = 2048, days: int = 30, not_before_days: int = 0) -> smime.Identity:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return smime.Identity(certificate(key, name, days, not_before_days), key)


def certificate(key, name: str, days: int = 30, not_before_days: int = 0) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.EMAIL_ADDRESS, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1) + datetime.timedelta(days=not_before_days))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))


def ec_certificate(name: str) -> x509.Certificate:
    return certificate(ec.generate_private_key(ec.SECP256R1()), name)


def write_pem(identity: smime.Identity, directory: Path, stem: str) -> tuple[Path, Path]:
    cert = directory / f"{stem}.crt"
    key = directory / f"{stem}.key"
    cert.write_bytes(identity.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(identity.private_key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return cert, key


def gpg_keys(directory: Path, *user_ids: str) -> list[pysequoia.Tsk]:
    """Secret keys made by GnuPG (Ed25519 with a Curve25519 encryption subkey),
    as partners' keys are: they announce SEIPDv1 only, which Debian's gpg 2.2
    and sq 0.27 read (a key pysequoia makes also announces SEIPDv2)."""
    keys = []
    with gnupg_home(directory) as env:
        for user_id in user_ids:
            subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
                            "--quick-gen-key", user_id, "future-default", "default", "never"],
                           env=env, check=True, capture_output=True, timeout=60)
            exported = subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                                       "--export-secret-keys", user_id], env=env, check=True,
                                      capture_output=True, timeout=60).stdout
            keys.append(pysequoia.Tsk.from_bytes(exported))
    return keys


@contextmanager
def gnupg_home(directory: Path, *keys: bytes) -> Iterator[dict[str, str]]:
    """A GnuPG home holding these keys; yields the environment for `gpg`."""
    home = directory / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        for key in keys:
            subprocess.run(["gpg", "--batch", "--quiet", "--import"], input=key, env=env, check=True,
                           capture_output=True, timeout=60)
        yield env
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, timeout=60)


def issued(name: str, issuer: smime.Identity, *, bits: int = 2048, days: int = 30,
           usages: list | None = None) -> smime.Identity:
    """An RSA certificate issued by `issuer` (a CA), optionally with extended key usages."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, name)]))
               .issuer_name(issuer.certificate.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days)))
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return smime.Identity(builder.sign(issuer.private_key, hashes.SHA256()), key)


def pem(*identities: smime.Identity) -> bytes:
    return b"".join(i.certificate.public_bytes(serialization.Encoding.PEM) for i in identities)
