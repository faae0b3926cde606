"""The post-quantum hybrid recipient type: `mlkem768x25519` (X-Wing style).

The file key is sealed with HPKE (RFC 9180) base mode, KEM MLKEM768-X25519,
HKDF-SHA256, ChaCha20-Poly1305, info "age-encryption.org/mlkem768x25519".
The identity is a 32-byte seed; the KEM's key pair is derived from it by
expanding the seed with SHAKE256 to 96 bytes: 64 for the ML-KEM-768 seed
(d || z), 32 for the X25519 private key (draft-ietf-hpke-pq).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import b64, bech32
from .errors import HeaderError
from .header import Stanza
from .x25519 import FILE_KEY_SIZE

STANZA_TYPE = "mlkem768x25519"
RECIPIENT_HRP = "age1pq"
IDENTITY_HRP = "age-secret-key-pq-"
_INFO = b"age-encryption.org/mlkem768x25519"
MLKEM_PUBLIC_SIZE = 1184
MLKEM_CIPHERTEXT_SIZE = 1088
PUBLIC_SIZE = MLKEM_PUBLIC_SIZE + 32
ENC_SIZE = MLKEM_CIPHERTEXT_SIZE + 32
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)

_P = 2**255 - 19
# u-coordinates of the points of order 1, 2, 4 and 8 on Curve25519 and its
# twist: with a clamped scalar, exactly these give the all-zero shared secret.
_LOW_ORDER = frozenset({
    0, 1, _P - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})


def _low_order(share: bytes) -> bool:
    """True when X25519 with this share gives all zeros (RFC 7748 masks bit 255;
    encodings of u >= p are reduced, as X25519 implementations do)."""
    u = int.from_bytes(share, "little") & ((1 << 255) - 1)
    return u % _P in _LOW_ORDER


def _raw(key: X25519PublicKey | MLKEM768PublicKey) -> bytes:
    return key.public_bytes_raw()


class HybridRecipient:
    post_quantum = True

    def __init__(self, public: bytes) -> None:
        if len(public) != PUBLIC_SIZE:
            raise ValueError(f"mlkem768x25519 recipient must be {PUBLIC_SIZE} bytes")
        self.public = public
        self._text: str | None = None
        # from_public_bytes validates the ML-KEM encapsulation key.
        self._key = hpke.MLKEM768X25519PublicKey(
            MLKEM768PublicKey.from_public_bytes(public[:MLKEM_PUBLIC_SIZE]),
            X25519PublicKey.from_public_bytes(public[MLKEM_PUBLIC_SIZE:]),
        )

    def __str__(self) -> str:
        if self._text is None:
            self._text = bech32.encode(RECIPIENT_HRP, self.public)
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridRecipient) and other.public == self.public

    def __hash__(self) -> int:
        return hash(self.public)

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes] = os.urandom) -> Stanza:
        # HPKE draws its own randomness inside OpenSSL; rng cannot reach it.
        sealed = _SUITE.encrypt(file_key, self._key, _INFO)
        enc, body = sealed[:ENC_SIZE], sealed[ENC_SIZE:]
        return Stanza(STANZA_TYPE, (b64.encode(enc).decode(),), body)


class HybridIdentity:
    post_quantum = True

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("mlkem768x25519 identity must be 32 bytes")
        self.secret = seed
        expanded = hashlib.shake_256(seed).digest(96)
        mlkem = MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x25519 = X25519PrivateKey.from_private_bytes(expanded[64:])
        self._key = hpke.MLKEM768X25519PrivateKey(mlkem, self._x25519)
        self._public = _raw(mlkem.public_key()) + _raw(self._x25519.public_key())
        self._recipient: HybridRecipient | None = None

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> HybridIdentity:
        return cls(rng(32))

    def __str__(self) -> str:
        return bech32.encode(IDENTITY_HRP, self.secret).upper()

    def __repr__(self) -> str:
        return f"HybridIdentity(fingerprint of {len(self._public)}-byte recipient)"  # never the secret

    def recipient(self) -> HybridRecipient:
        if self._recipient is None:  # parsed and encoded once, not per message
            self._recipient = HybridRecipient(self._public)
        return self._recipient

    def unwrap(self, stanza: Stanza) -> bytes | None:
        """Return the file key, None if the stanza is not ours, or raise HeaderError."""
        if stanza.type != STANZA_TYPE:
            return None
        if len(stanza.args) != 1:
            raise HeaderError("mlkem768x25519 stanza must have exactly one argument")
        try:
            enc = b64.decode(stanza.args[0].encode())
        except ValueError:
            raise HeaderError("mlkem768x25519 enc is not canonical base64") from None
        if len(enc) != ENC_SIZE:
            raise HeaderError(f"mlkem768x25519 enc must be {ENC_SIZE} bytes")
        if len(stanza.body) != FILE_KEY_SIZE + 16:
            raise HeaderError("mlkem768x25519 stanza body must be 32 bytes")
        if _low_order(enc[MLKEM_CIPHERTEXT_SIZE:]):
            # The all-zero X25519 secret is refused, as the spec demands. An
            # arithmetic check: a second X25519 just to see the zeros would
            # cost as much as the rest of the unwrap's X25519 half.
            raise HeaderError("mlkem768x25519 enc has a low-order X25519 share")
        try:
            return _SUITE.decrypt(enc + stanza.body, self._key, _INFO)
        except Exception:  # any failure to open means: not sealed to this key
            return None
