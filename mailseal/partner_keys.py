"""Partner certificates and local S/MIME / OpenPGP secret keys, as the keystore stores them.

Checks what `keys import` must refuse before anything is written, and turns
each key into the text the keystore keeps: an X.509 leaf certificate as PEM
(kind "x509"), an OpenPGP certificate armored (kind "openpgp"). Secret keys
become the bytes the keystore seals at rest: the RSA key as PKCS#8 PEM for
S/MIME, the transferable secret key (binary) for OpenPGP.

X.509: PEM or DER; a PEM file may carry the chain after the leaf, each
certificate issued by the next one and every one of them within its
validity period; with trust anchors (`--ca`), the last one must be issued
by (or be) one of them. The leaf must be RSA of at least 2,048 bits (EC is
refused, smime.check_certificate says why), allow key encipherment when it
states key usage, and e-mail protection when it states extended key usage.

No SMTP and no SQL here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import openpgp, smime
from .partner_errors import PartnerFormatError

X509, OPENPGP = "x509", "openpgp"
KINDS = (X509, OPENPGP)


class PartnerKeyError(ValueError):
    """A certificate or secret key that cannot be imported (the message says why)."""


@dataclass(frozen=True)
class PartnerKey:
    kind: str  # X509 or OPENPGP
    public: str  # what the keystore stores and exports: PEM leaf, or armored certificate
    expires: int | None  # Unix seconds
    secret: bytes | None = field(default=None, repr=False)  # local keys only: sealed at rest by the keystore


def looks_like_certificate(data: bytes) -> bool:
    """PEM or armored certificate text, or binary data (DER, OpenPGP packets)."""
    text = data.lstrip()
    return (text.startswith((b"-----BEGIN CERTIFICATE-----", b"-----BEGIN PGP PUBLIC KEY BLOCK-----"))
            or (bool(text) and not text[:64].isascii()) or text[:1] in (b"\x30", b"\x99", b"\xc6"))


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise PartnerKeyError("not an X.509 certificate (PEM or DER)") from None


def _check_chain(chain: list[x509.Certificate], anchors: list[x509.Certificate], now: float) -> None:
    for certificate in chain:
        if smime.expired(certificate, now):
            raise PartnerKeyError(f"certificate {certificate.subject.rfc4514_string()} is expired or not yet valid")
    for child, issuer in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise PartnerKeyError(f"the chain is broken: {child.subject.rfc4514_string()} is not issued by "
                                  f"{issuer.subject.rfc4514_string()}") from None
    if not anchors:
        return
    top = chain[-1]
    for anchor in anchors:
        if top == anchor:
            return
        try:
            top.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if not smime.expired(anchor, now):
            return
    raise PartnerKeyError("the certificate does not chain to any of the given trust anchors (--ca)")


def _check_usage(leaf: x509.Certificate) -> None:
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_encipherment:
        raise PartnerKeyError("the certificate's key usage does not allow key encipherment (not for encryption)")
    try:
        extended = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in extended and \
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in extended:
        raise PartnerKeyError("the certificate's extended key usage does not include e-mail protection")


def x509_certificate(data: bytes, anchors: list[x509.Certificate] = (), now: float | None = None) -> PartnerKey:
    """A partner's S/MIME certificate (the leaf first, then its chain, if any)."""
    chain = _pem_certificates(data)
    if not chain:
        raise PartnerKeyError("no certificate found")
    leaf = chain[0]
    try:
        smime.check_certificate(leaf)
    except PartnerFormatError as exc:
        raise PartnerKeyError(str(exc)) from None
    _check_chain(chain, list(anchors), _now(now))
    _check_usage(leaf)
    return PartnerKey(X509, leaf.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                      int(leaf.not_valid_after_utc.timestamp()))


def trust_anchors(data: bytes) -> list[x509.Certificate]:
    return _pem_certificates(data)


def openpgp_certificate(data: bytes, now: float | None = None) -> PartnerKey:
    """A partner's OpenPGP certificate (armored or binary)."""
    try:
        certificate = openpgp.load_certificate(data, now)
    except PartnerFormatError as exc:
        raise PartnerKeyError(str(exc)) from None
    expires = certificate.expiration
    return PartnerKey(OPENPGP, str(certificate), None if expires is None else int(expires.timestamp()))


def certificate(data: bytes, anchors: list[x509.Certificate] = (), now: float | None = None) -> PartnerKey:
    """Either kind, told by its encoding."""
    text = data.lstrip()
    if text.startswith(b"-----BEGIN CERTIFICATE-----") or text[:1] == b"\x30":
        return x509_certificate(data, anchors, now)
    if anchors:
        raise PartnerKeyError("--ca applies to X.509 certificates only")
    return openpgp_certificate(data, now)


def secret_key(data: bytes, password: bytes | None = None, now: float | None = None) -> PartnerKey:
    """A local S/MIME key (PKCS#12) or OpenPGP secret key, to open mail with."""
    text = data.lstrip()
    try:
        if text.startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----") or text[:1] in (b"\x95", b"\x97", b"\xc5",
                                                                                     b"\xc7"):
            key = openpgp.load_secret_key(data)
            public = key.extract_certificate()
            expires = public.expiration
            return PartnerKey(OPENPGP, str(public), None if expires is None else int(expires.timestamp()),
                              bytes(key))
        identity = smime.load_pkcs12(data, password)
    except PartnerFormatError as exc:
        raise PartnerKeyError(str(exc)) from None
    pem = identity.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
    return PartnerKey(X509, identity.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                      int(identity.certificate.not_valid_after_utc.timestamp()), pem)


def load_smime_identity(public: str, secret: bytes) -> smime.Identity:
    """A stored S/MIME identity back (the keystore opened the sealed secret)."""
    key = serialization.load_pem_private_key(secret, None)
    return smime.Identity(x509.load_pem_x509_certificate(public.encode("ascii")), key)  # type: ignore[arg-type]


def load_openpgp_key(secret: bytes):
    return openpgp.load_secret_key(secret)

