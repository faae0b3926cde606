"""The classic X25519 recipient type (age's native `X25519` stanza)."""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import b64, bech32
from .errors import HeaderError
from .header import Stanza, _hkdf

STANZA_TYPE = "X25519"
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)
FILE_KEY_SIZE = 16


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes_raw()


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # OpenSSL refuses the all-zero shared secret of a low-order point.
        raise HeaderError("X25519 share is a low-order point") from None


class X25519Recipient:
    post_quantum = False

    def __init__(self, public: bytes) -> None:
        if len(public) != 32:
            raise ValueError("X25519 recipient must be 32 bytes")
        self.public = public
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = bech32.encode(RECIPIENT_HRP, self.public)
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other.public == self.public

    def __hash__(self) -> int:
        return hash(self.public)

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes] = os.urandom) -> Stanza:
        ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
        share = _raw(ephemeral.public_key())
        shared = _exchange(ephemeral, self.public)
        key = _hkdf(shared, share + self.public, _INFO)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza(STANZA_TYPE, (b64.encode(share).decode(),), body)


class X25519Identity:
    post_quantum = False

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("X25519 identity must be 32 bytes")
        self.secret = secret
        self._private = X25519PrivateKey.from_private_bytes(secret)
        self._public = _raw(self._private.public_key())
        self._recipient: X25519Recipient | None = None

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> X25519Identity:
        return cls(rng(32))

    def __str__(self) -> str:
        return bech32.encode(IDENTITY_HRP, self.secret).upper()

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient()})"  # never the secret

    def recipient(self) -> X25519Recipient:
        if self._recipient is None:  # parsed and encoded once, not per message
            self._recipient = X25519Recipient(self._public)
        return self._recipient

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """Return the file key, None if the stanza is not ours, or raise HeaderError."""
        if stanza.type != STANZA_TYPE:
            return None
        if len(stanza.args) != 1:
            raise HeaderError("X25519 stanza must have exactly one argument")
        try:
            share = b64.decode(stanza.args[0].encode())
        except ValueError:
            raise HeaderError("X25519 share is not canonical base64") from None
        if len(share) != 32:
            raise HeaderError("X25519 share must be 32 bytes")
        if len(stanza.body) != FILE_KEY_SIZE + 16:
            raise HeaderError("X25519 stanza body must be 32 bytes")
        shared = _exchange(self._private, share)
        key = _hkdf(shared, share + self._public, _INFO)
        try:
            return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            return None
