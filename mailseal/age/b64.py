"""age's base64: standard alphabet, no padding, canonical encodings only."""

import binascii

_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=")


def decode(text: bytes) -> bytes:
    """Decode unpadded base64; raise ValueError on anything non-canonical."""
    if not _ALPHABET.issuperset(text):
        raise ValueError("invalid base64 character")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64 length")
    data = binascii.a2b_base64(text + b"=" * (-len(text) % 4), strict_mode=True)
    # Canonical means the unused low bits of the last character are zero;
    # re-encoding is the simplest exact check.
    if encode(data) != text:
        raise ValueError("non-canonical base64")
    return data

