"""age v1 (C2SP age specification) on `cryptography` primitives.

The public API is this file: encrypt and decrypt whole files, wrap and
unwrap file keys, parse and generate keys. Errors are typed so a caller can
tell "not for these keys" (NoIdentityMatch) from "malformed" (HeaderError)
from "tampered" (AuthenticationError).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

from .errors import (
    AgeError,
    AuthenticationError,
    HeaderError,
    KeyFormatError,
    MixedRecipientsError,
    NoIdentityMatch,
)
from .header import Header, Stanza, encode_header, parse_header
from .hybrid import HybridIdentity, HybridRecipient
from .keys import (
    Identity,
    Recipient,
    generate,
    identity_file,
    parse_identities,
    parse_identity,
    parse_recipient,
    parse_recipients,
)
from .stream import NONCE_SIZE, PayloadDecryptor, decrypt_payload, encrypt_payload, payload_size
from .x25519 import FILE_KEY_SIZE, X25519Identity, X25519Recipient

__all__ = [
    "AgeError", "AuthenticationError", "HeaderError", "KeyFormatError", "MixedRecipientsError",
    "NoIdentityMatch", "Header", "Stanza", "HybridIdentity", "HybridRecipient", "X25519Identity",
    "X25519Recipient", "Identity", "Recipient", "PayloadDecryptor", "generate", "identity_file",
    "parse_identities", "parse_identity", "parse_recipient", "parse_recipients", "parse_header",
    "encrypt_header", "encrypt", "encrypt_payload", "payload_size", "unwrap", "unwrap_file_key", "check_recipients",
    "decrypt", "decrypt_payload", "NONCE_SIZE",
]


def check_recipients(recipients: Sequence[Recipient]) -> None:
    """Refuse an empty list, and post-quantum and classic keys in one file.

    A classic stanza next to a post-quantum one would let whoever breaks
    X25519 read the file, so the post-quantum protection would be void.
    """
    if not recipients:
        raise ValueError("at least one recipient is needed")
    if len({r.post_quantum for r in recipients}) > 1:
        raise MixedRecipientsError()


def encrypt_header(
    recipients: Sequence[Recipient],
    extra_stanzas: Iterable[Stanza] = (),
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, bytes]:
    """Return (file key, encoded header) for a new file to these recipients."""
    check_recipients(recipients)
    file_key = rng(FILE_KEY_SIZE)
    stanzas = [r.wrap(file_key, rng) for r in recipients] + list(extra_stanzas)
    return file_key, encode_header(stanzas, file_key)


def encrypt(
    plaintext: bytes, recipients: Sequence[Recipient], rng: Callable[[int], bytes] = os.urandom
) -> bytes:
    """A whole age file (binary, unarmored) in memory."""
    file_key, header = encrypt_header(recipients, rng=rng)
    return header + b"".join(encrypt_payload(file_key, plaintext, rng))


def unwrap(header: Header, identities: Sequence[Identity]) -> tuple[bytes, Identity]:
    """Find a stanza one identity opens, check the header MAC, return (file key, identity).

    A malformed stanza of a type one of our identities handles is a
    HeaderError even when another stanza would have matched.
    """
    for identity in identities:
        for stanza in header.stanzas:
            file_key = identity.unwrap(stanza)
            if file_key is None:
                continue
            if len(file_key) != FILE_KEY_SIZE:
                raise HeaderError("unwrapped file key has the wrong size")
            header.verify_mac(file_key)
            return file_key, identity
    raise NoIdentityMatch()


def unwrap_file_key(header: Header, identities: Sequence[Identity]) -> bytes:
    return unwrap(header, identities)[0]


def decrypt(data: bytes, identities: Sequence[Identity]) -> bytes:
    """Decrypt a whole age file held in memory."""
    header = parse_header(data)
    file_key = unwrap_file_key(header, identities)
    if len(data) - header.size < NONCE_SIZE:
        raise HeaderError("payload nonce is missing or short")
    return decrypt_payload(file_key, memoryview(data)[header.size :])
