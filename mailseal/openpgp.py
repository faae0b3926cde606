"""PGP/MIME copies (RFC 3156) for partners without mailseal, through pysequoia.

Sealing: the whole original message, header-protected (protect.py, RFC
9788), is encrypted by Sequoia (pysequoia) to each recipient certificate's
encryption-capable subkeys, ASCII-armored, and sent as
multipart/encrypted; protocol="application/pgp-encrypted": a
`Version: 1` control part, then the armored message as
application/octet-stream, the layout Thunderbird and Enigmail write.
Sequoia chooses the packet versions the certificates announce (SEIPDv1
with MDC for the GnuPG 2.2 keys of today, SEIPDv2 for RFC 9580 keys).

Opening: a local secret key opens a PGP/MIME message; Sequoia checks the
integrity protection (MDC or AEAD) before anything is returned and refuses
the old unprotected packets. pysequoia reports failures as RuntimeError
text only: that text is sorted into the partner_errors types here, and
nothing of it reaches a log.

No SMTP and no SQL here: bytes in, bytes out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pysequoia

from . import encrypted, mime, protect
from .partner_errors import MalformedMessage, NoKeyMatch, NotThisFormat, Tampered, UnsupportedKey

PROTOCOL = "application/pgp-encrypted"
PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"
# What pysequoia's error text says for each failure (its Rust error strings).
_NO_KEY = ("no key to decrypt",)
_TAMPERED = ("manipulated", "unexpected eof", "mdc", "authentication", "truncated", "checksum")


@dataclass(frozen=True)
class Opened:
    message: bytes = field(repr=False)  # the original message, header protection removed
    fingerprint: str  # the local key that opened it
    signers: tuple[str, ...] = ()  # fingerprints of valid signatures inside, if any


def load_certificate(data: bytes, now: float | None = None) -> pysequoia.Cert:
    """A recipient certificate (armored or binary) that can receive mail now.

    Refused: secret keys given as certificates, revoked or expired
    certificates, and certificates without an encryption-capable subkey.
    """
    try:
        parsed = pysequoia.Tsk.from_bytes(data)
    except (RuntimeError, ValueError):
        raise MalformedMessage("not an OpenPGP certificate (armored or binary)") from None
    certificate = parsed.extract_certificate()
    if _has_secrets(parsed):
        raise UnsupportedKey("this is a secret key: import only the partner's public certificate")
    check_certificate(certificate, now)
    return certificate


def check_certificate(certificate: pysequoia.Cert, now: float | None = None) -> None:
    """Refuse a certificate that cannot be encrypted to now, saying why."""
    if certificate.is_revoked:
        raise UnsupportedKey("the OpenPGP certificate is revoked")
    if expired(certificate, now):
        raise UnsupportedKey("the OpenPGP certificate has expired")
    try:
        pysequoia.encrypt(b"", [certificate], armor=False)
    except RuntimeError:
        raise UnsupportedKey("the OpenPGP certificate has no valid encryption-capable subkey") from None


def expired(certificate: pysequoia.Cert, now: float | None = None) -> bool:
    expiration = certificate.expiration
    if expiration is None:
        return False
    moment = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return moment >= expiration.astimezone(timezone.utc)


def load_secret_key(data: bytes) -> pysequoia.Tsk:
    """A local secret key (armored or binary, unprotected) that can decrypt."""
    try:
        key = pysequoia.Tsk.from_bytes(data)
        key.decryptor()
    except (RuntimeError, ValueError):
        key = None
    if key is None or not _has_secrets(key):
        raise MalformedMessage("not an unprotected OpenPGP secret key with an encryption subkey")
    return key


def _has_secrets(key: pysequoia.Tsk) -> bool:
    # Tsk.from_bytes also takes a public certificate; the secret parts are
    # what its encoding has beyond the certificate's.
    return bytes(key) != bytes(key.extract_certificate())


def seal(message: bytes, certificates: list[pysequoia.Cert], *, now: float | None = None,
         rng: Callable[[int], bytes] = os.urandom, eol: bytes | None = None) -> bytes:
    """One PGP/MIME copy of message for these recipient certificates."""
    if not certificates:
        raise ValueError("an OpenPGP copy needs at least one recipient certificate")
    try:
        armored = pysequoia.encrypt(protect.wrap(message), certificates, armor=True)
    except RuntimeError:
        raise UnsupportedKey("a recipient certificate has no valid encryption-capable subkey") from None
    eol = eol or mime.line_ending(message)
    date = int(time.time() if now is None else now)
    boundary = b"=_mailseal_pgp_" + rng(12).hex().encode()
    armored_lines = eol.join(armored.rstrip(b"\n").split(b"\n")) + eol
    return (
        protect.outer_headers(message, eol, date)
        + b"Content-Type: multipart/encrypted;" + eol
        + b' protocol="application/pgp-encrypted";' + eol
        + b' boundary="' + boundary + b'"' + eol
        + eol
        + PREAMBLE + eol
        + b"--" + boundary + eol
        + b"Content-Type: application/pgp-encrypted" + eol
        + b"Content-Description: PGP/MIME version identification" + eol
        + eol
        + b"Version: 1" + eol
        + eol
        + b"--" + boundary + eol
        + b'Content-Type: application/octet-stream; name="encrypted.asc"' + eol
        + b"Content-Description: OpenPGP encrypted message" + eol
        + b'Content-Disposition: inline; filename="encrypted.asc"' + eol
        + eol
        + armored_lines
        + eol
        + b"--" + boundary + b"--" + eol
    )


def armored_message(message: bytes) -> bytes:
    """The armored OpenPGP message of a PGP/MIME message.

    NotThisFormat when the message does not even say it is PGP/MIME;
    MalformedMessage when it says so but encrypted.verify (the structure
    check outbound uses too) does not find one.
    """
    head, body_at = mime.split_head(message)
    headers = mime.Headers(head)
    if headers.content_type() != "multipart/encrypted" or \
            headers.param("protocol").lower() != PROTOCOL:
        raise NotThisFormat("not a PGP/MIME encrypted message")
    if encrypted.verify(message) != encrypted.PGP_MIME:
        raise MalformedMessage("labelled PGP/MIME, but not an encrypted PGP/MIME message")
    boundary = headers.boundary() or ""
    try:
        spans = mime.find_parts(message, boundary.encode("ascii", "replace"), body_at)
    except mime.MimeError as exc:  # verify() found them: cannot happen, but say so if it does
        raise MalformedMessage(str(exc)) from None
    start, end = spans[1]
    part = message[start:end]
    _, part_body_at = mime.split_head(part)
    return bytes(part[part_body_at:])


def open_message(message: bytes, keys: list[pysequoia.Tsk],
                 signer_certificates: Callable[[list[str]], list[pysequoia.Cert]] | None = None) -> Opened:
    """Open a PGP/MIME message with the first secret key it is encrypted to.

    With `signer_certificates` (given the signing key fingerprints, it
    returns the certificates to check them with), Opened.signers names the
    certificates whose signatures verified; a message without a signature
    that verifies is then decrypted a second time, as pysequoia refuses it
    in verifying mode. pysequoia 0.1.35 verifies only signatures directly
    inside the encryption (GnuPG compresses by default: its signatures are
    then not verified, and signers is empty). Raises NotThisFormat, MalformedMessage, NoKeyMatch or
    Tampered.
    """
    armored = armored_message(message)
    for key in keys:
        decrypted = None
        if signer_certificates is not None:
            decrypted = _decrypt(armored, key, signer_certificates)
        if decrypted is None:
            decrypted = _decrypt(armored, key, None)
        if decrypted is None:
            continue
        content = decrypted.bytes
        if content is None:
            raise MalformedMessage("the OpenPGP message holds no data")
        signers = tuple(sorted({str(sig.certificate) for sig in decrypted.valid_sigs}))
        return Opened(protect.unwrap(content), key.extract_certificate().fingerprint, signers)
    raise NoKeyMatch()


def _decrypt(armored: bytes, key: pysequoia.Tsk,
             store: Callable[[list[str]], list[pysequoia.Cert]] | None) -> pysequoia.Decrypted | None:
    """Decrypted, or None when not for this key (or, verifying, no signature verified)."""
    try:
        if store is None:
            return pysequoia.decrypt(armored, decryptor=key.decryptor())
        return pysequoia.decrypt(armored, decryptor=key.decryptor(), store=store)
    except (RuntimeError, ValueError) as exc:
        if store is not None:
            # No signature verified, or a layout pysequoia cannot verify
            # (signatures inside compressed data): the caller decrypts again
            # without verifying, which also sorts out any other failure.
            return None
        reason = str(exc).split("\n", 1)[0].lower()
    if any(word in reason for word in _NO_KEY):
        return None
    if any(word in reason for word in _TAMPERED):
        raise Tampered() from None
    raise MalformedMessage("malformed OpenPGP message") from None
