"""S/MIME enveloped-data copies (RFC 8551) for partners without mailseal.

Sealing: the whole original message, header-protected (protect.py, RFC
9788), is the content of a CMS EnvelopedData (RFC 5652) made by
cryptography's PKCS7EnvelopeBuilder: AES-256-CBC content encryption, one
KeyTransRecipientInfo (RSAES-PKCS1-v1_5) a recipient certificate, sent as
application/pkcs7-mime; smime-type=enveloped-data, base64.

Recipients are RSA certificates of at least 2048 bits. EC certificates
(P-256/P-384) would need KeyAgreeRecipientInfo (RFC 5753), which the builder
does not make: they are refused with UnsupportedKey, at import time.

Opening: a local identity (certificate and private key from PKCS#12) opens
EnvelopedData with AES-128/256-CBC. EnvelopedData has no integrity check of
its own: a change to the final cipher block or to the structure is refused
(Tampered, MalformedMessage), a change elsewhere in the ciphertext garbles
the text without being detected. Only a signature inside proves the content
(docs/FORMAT.md).

No SMTP and no SQL here: bytes in, bytes out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs12, pkcs7

from . import encrypted, mime, protect
from .partner_errors import MalformedMessage, NoKeyMatch, NotThisFormat, Tampered, UnsupportedKey

MIN_RSA_BITS = 2048
CONTENT_TYPE = (b"application/pkcs7-mime; smime-type=enveloped-data;", b' name="smime.p7m"')
DISPOSITION = b'attachment; filename="smime.p7m"'


@dataclass(frozen=True)
class Identity:
    """A local S/MIME key: the certificate senders encrypt to, and its private key."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey = field(repr=False)


@dataclass(frozen=True)
class Opened:
    message: bytes = field(repr=False)  # the original message, header protection removed
    identity: Identity = field(repr=False)  # the local key that opened it


def load_certificate(data: bytes) -> x509.Certificate:
    """A recipient certificate from PEM or DER, checked with check_certificate."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        raise MalformedMessage("not an X.509 certificate (PEM or DER)") from None
    check_certificate(certificate)
    return certificate


def check_certificate(certificate: x509.Certificate) -> None:
    """Refuse a certificate mailseal cannot encrypt to, saying why."""
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        raise UnsupportedKey(
            f"EC certificates ({key.curve.name}) are not supported yet: S/MIME to an EC key needs "
            "KeyAgreeRecipientInfo (RFC 5753); ask the partner for an RSA certificate"
        )
    if not isinstance(key, rsa.RSAPublicKey):
        raise UnsupportedKey("only RSA certificates can be S/MIME recipients")
    if key.key_size < MIN_RSA_BITS:
        raise UnsupportedKey(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} are required")


def expired(certificate: x509.Certificate, now: float | None = None) -> bool:
    """True outside the certificate's validity period."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc


def load_pkcs12(data: bytes, password: bytes | None = None) -> Identity:
    """A local identity from a PKCS#12 file (the certificate and its RSA key)."""
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MalformedMessage("not a PKCS#12 file, or the wrong password") from None
    if key is None or certificate is None:
        raise MalformedMessage("the PKCS#12 file lacks a private key or its certificate")
    check_certificate(certificate)
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key().public_numbers() != \
            certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise UnsupportedKey("the PKCS#12 private key does not belong to its certificate")
    return Identity(certificate, key)


def seal(message: bytes, certificates: list[x509.Certificate], *, now: float | None = None,
         eol: bytes | None = None) -> bytes:
    """One S/MIME copy of message for these recipient certificates."""
    if not certificates:
        raise ValueError("an S/MIME copy needs at least one recipient certificate")
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(protect.wrap(message))
    for certificate in certificates:
        check_certificate(certificate)
        builder = builder.add_recipient(certificate)
    # Binary: the content is the message's bytes as they are, no newline conversion.
    der = builder.set_content_encryption_algorithm(algorithms.AES256).encrypt(
        serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    eol = eol or mime.line_ending(message)
    date = int(time.time() if now is None else now)
    return (
        protect.outer_headers(message, eol, date)
        + b"Content-Type: " + CONTENT_TYPE[0] + eol + CONTENT_TYPE[1] + eol
        + b"Content-Transfer-Encoding: base64" + eol
        + b"Content-Disposition: " + DISPOSITION + eol
        + eol
        + b"".join(mime.base64_lines(der, eol))
    )


def enveloped_data(message: bytes) -> bytes:
    """The DER EnvelopedData of an S/MIME message.

    NotThisFormat when the message does not even say it is S/MIME;
    MalformedMessage when it says so but is not one well-formed
    EnvelopedData (encrypted.verify decides, as it does for outbound).
    """
    head, body_at = mime.split_head(message)
    if mime.Headers(head).content_type() not in encrypted.SMIME_TYPES:
        raise NotThisFormat("not S/MIME")
    if encrypted.verify(message) != encrypted.SMIME:
        raise MalformedMessage("labelled S/MIME, but not one well-formed CMS EnvelopedData")
    body = memoryview(message)[body_at:]
    encoding = (mime.Headers(head).get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if encoding != "base64":
        return bytes(body)
    try:
        return b"".join(mime.decode_base64(body))
    except mime.MimeError as exc:
        raise MalformedMessage(f"bad S/MIME body: {exc}") from None


def open_message(message: bytes, identities: list[Identity]) -> Opened:
    """Open an S/MIME enveloped-data message with the first identity it is encrypted to.

    Raises NotThisFormat, MalformedMessage, NoKeyMatch or Tampered.
    """
    der = enveloped_data(message)
    for identity in identities:
        try:
            content = pkcs7.pkcs7_decrypt_der(der, identity.certificate, identity.private_key, [])
        except UnsupportedAlgorithm as exc:
            raise MalformedMessage(f"unsupported S/MIME algorithm: {exc}") from None
        except ValueError as exc:
            reason = str(exc)
            if reason.startswith("No recipient found"):
                continue
            if "padding" in reason.lower():
                raise Tampered() from None
            raise MalformedMessage("malformed S/MIME enveloped data") from None
        return Opened(protect.unwrap(content), identity)
    raise NoKeyMatch()
