"""Sender signing keys: a composite of Ed25519 and ML-DSA-65, or Ed25519 alone.

A composite signature is the Ed25519 signature (64 bytes) followed by the
ML-DSA-65 signature (3,309 bytes), both over the same message; it is valid
only when both verify, so it stands while either algorithm does. The
Ed25519-only kind is for partners who cannot verify ML-DSA; a verifier that
holds a composite key for a signer never accepts an Ed25519-only signature
from it (the kind is the key's, not the message's).

Keys are text, like age's: `mailseal-sign-hybrid1:<base64>` (public),
`MAILSEAL-SIGNING-KEY-HYBRID-1:<base64 of the two 32-byte seeds>` (private),
and `...-ed25519...` for the Ed25519-only kind. No SMTP, no SQL here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HYBRID = "ed25519+mldsa65"
ED25519 = "ed25519"
KINDS = (HYBRID, ED25519)
# What a trace header or report calls each kind.
KIND_NAMES = {HYBRID: "hybrid", ED25519: "ed25519"}
ED25519_SIZE = 64
MLDSA65_SIZE = 3309
MLDSA65_PUBLIC_SIZE = 1952
# ML-DSA's own domain separation (FIPS 204 context string).
MLDSA_CONTEXT = b"mailseal.org/v2/sig"

_PUBLIC_PREFIX = {HYBRID: "mailseal-sign-hybrid1:", ED25519: "mailseal-sign-ed25519-1:"}
_PRIVATE_PREFIX = {HYBRID: "MAILSEAL-SIGNING-KEY-HYBRID-1:", ED25519: "MAILSEAL-SIGNING-KEY-ED25519-1:"}


class SigningKeyError(ValueError):
    """A signing or verifying key string that cannot be parsed."""


class BadSignature(Exception):
    """A signature that does not verify; `half` names the part that failed."""

    def __init__(self, half: str) -> None:
        super().__init__(f"the {half} signature does not verify")
        self.half = half


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what}: bad base64") from None


def _split_prefix(text: str, prefixes: dict[str, str], what: str) -> tuple[str, bytes]:
    text = "".join(text.split())
    for kind, prefix in prefixes.items():
        if text.startswith(prefix):
            return kind, _unb64(text[len(prefix):], what)
    raise SigningKeyError(f"not a mailseal {what}")


@dataclass(frozen=True)
class VerifyKey:
    kind: str
    ed25519: Ed25519PublicKey = field(repr=False)
    mldsa: mldsa.MLDSA65PublicKey | None = field(repr=False, default=None)

    def raw(self) -> bytes:
        ml = self.mldsa.public_bytes_raw() if self.mldsa is not None else b""
        return self.ed25519.public_bytes_raw() + ml

    def __str__(self) -> str:
        return _PUBLIC_PREFIX[self.kind] + _b64(self.raw())

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise BadSignature unless every half verifies."""
        expected = ED25519_SIZE + (MLDSA65_SIZE if self.kind == HYBRID else 0)
        if len(signature) != expected:
            raise BadSignature("length of the")
        try:
            self.ed25519.verify(signature[:ED25519_SIZE], message)
        except InvalidSignature:
            raise BadSignature("Ed25519") from None
        if self.mldsa is not None:
            try:
                self.mldsa.verify(signature[ED25519_SIZE:], message, MLDSA_CONTEXT)
            except InvalidSignature:
                raise BadSignature("ML-DSA-65") from None



@dataclass(frozen=True)
class SignerKeys:
    """What a verifier has on file for one signer: the keys that verify, the
    revoked ones (a signature they verify is a forgery, not an old sender),
    and the kinds of every key ever recorded (a composite key on file means
    the signer signs with both algorithms: an Ed25519-only signature is a
    downgrade)."""

    usable: tuple[VerifyKey, ...] = ()
    revoked: tuple[VerifyKey, ...] = ()
    kinds: frozenset[str] = frozenset()

    @classmethod
    def of(cls, keys) -> SignerKeys:
        """Keys from a card: all usable."""
        keys = tuple(keys)
        return cls(keys, (), frozenset(k.kind for k in keys))

def parse_verify_key(text: str) -> VerifyKey:
    kind, raw = _split_prefix(text, _PUBLIC_PREFIX, "signing public key")
    size = 32 + (MLDSA65_PUBLIC_SIZE if kind == HYBRID else 0)
    if len(raw) != size:
        raise SigningKeyError(f"a {kind} public key is {size} bytes, not {len(raw)}")
    try:
        ed = Ed25519PublicKey.from_public_bytes(raw[:32])
        ml = mldsa.MLDSA65PublicKey.from_public_bytes(raw[32:]) if kind == HYBRID else None
    except ValueError:
        raise SigningKeyError(f"invalid {kind} public key") from None
    return VerifyKey(kind, ed, ml)


@dataclass(frozen=True)
class SigningKey:
    kind: str
    ed25519: Ed25519PrivateKey = field(repr=False)
    mldsa: mldsa.MLDSA65PrivateKey | None = field(repr=False, default=None)

    def public(self) -> VerifyKey:
        return VerifyKey(self.kind, self.ed25519.public_key(),
                         self.mldsa.public_key() if self.mldsa is not None else None)

    def __str__(self) -> str:
        seeds = self.ed25519.private_bytes_raw() + (self.mldsa.private_bytes_raw() if self.mldsa else b"")
        return _PRIVATE_PREFIX[self.kind] + _b64(seeds)

    def sign(self, message: bytes) -> bytes:
        ed = self.ed25519.sign(message)
        return ed + (self.mldsa.sign(message, MLDSA_CONTEXT) if self.mldsa is not None else b"")


def generate(kind: str = HYBRID) -> SigningKey:
    if kind not in KINDS:
        raise SigningKeyError(f"signing key kind must be one of {', '.join(KINDS)}")
    return SigningKey(kind, Ed25519PrivateKey.generate(),
                      mldsa.MLDSA65PrivateKey.generate() if kind == HYBRID else None)


def parse_signing_key(text: str) -> SigningKey:
    kind, raw = _split_prefix(text, _PRIVATE_PREFIX, "signing key")
    if len(raw) != (64 if kind == HYBRID else 32):
        raise SigningKeyError(f"a {kind} signing key has the wrong length")
    return SigningKey(kind, Ed25519PrivateKey.from_private_bytes(raw[:32]),
                      mldsa.MLDSA65PrivateKey.from_seed_bytes(raw[32:]) if kind == HYBRID else None)


def looks_like_verify_key(text: str) -> bool:
    return text.strip().startswith(tuple(_PUBLIC_PREFIX.values()))
