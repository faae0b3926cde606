"""age's STREAM payload: 64 KiB chunks of ChaCha20-Poly1305.

The nonce of chunk i is an 11-byte big-endian counter followed by one byte
that is 1 for the final chunk and 0 otherwise. The final chunk may be short
but is empty only when the whole plaintext is.

PayloadDecryptor is incremental so a caller can feed base64-decoded slices as
they come and hold only one chunk of ciphertext at a time. It releases a
chunk's plaintext only after that chunk authenticated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import AuthenticationError
from .header import _hkdf

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
NONCE_SIZE = 16


def _payload_key(file_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))


def _chunk_nonce(counter: int, final: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def payload_size(plaintext_size: int) -> int:
    """Bytes of payload (nonce included) that encrypting plaintext_size gives."""
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return NONCE_SIZE + plaintext_size + chunks * TAG_SIZE


# 57 encrypted chunks are a whole number of base64 lines (57 bytes a line),
# so pieces of that size can be base64-encoded independently.
SEGMENT_CHUNKS = 57


def encrypt_payload(
    file_key: bytes, plaintext: bytes | memoryview, rng: Callable[[int], bytes] = os.urandom
) -> Iterator[memoryview]:
    """Yield the payload (nonce, then the encrypted chunks) in pieces.

    Every piece but the last is exactly SEGMENT_CHUNKS * ENCRYPTED_CHUNK_SIZE
    bytes long (a multiple of 57), whatever the nonce offset; each is encrypted
    in place into its own buffer (encrypt_into), so the whole ciphertext never
    sits in memory at once.
    """
    nonce = rng(NONCE_SIZE)
    aead = _payload_key(file_key, nonce)
    view = memoryview(plaintext)
    chunks = max(1, -(-len(view) // CHUNK_SIZE))
    carry = nonce
    for first in range(0, chunks, SEGMENT_CHUNKS):
        last = min(chunks, first + SEGMENT_CHUNKS)
        end = min(len(view), last * CHUNK_SIZE)
        buffer = bytearray(NONCE_SIZE + end - first * CHUNK_SIZE + (last - first) * TAG_SIZE)
        out = memoryview(buffer)
        pos = NONCE_SIZE
        for index in range(first, last):
            piece = view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
            size = len(piece) + TAG_SIZE
            aead.encrypt_into(_chunk_nonce(index, index == chunks - 1), piece, None, out[pos : pos + size])
            pos += size
        # This segment's buffer starts with the 16 bytes the previous one
        # held back (the nonce, the first time), and holds back its own last 16.
        out[:NONCE_SIZE] = carry
        if last == chunks:
            yield out
        else:
            carry = bytes(out[-NONCE_SIZE:])
            yield out[:-NONCE_SIZE]


class PayloadDecryptor:
    """Feed payload bytes with update(); call finish() at the end of input.

    A full-size chunk is opened as soon as it is buffered: as a non-final
    chunk first, then as a full-size final one (as the reference
    implementation does). Every failure raises the same opaque
    AuthenticationError; only authenticated plaintext is ever returned.
    """

    def __init__(self, file_key: bytes) -> None:
        self._file_key = file_key
        self._aead: ChaCha20Poly1305 | None = None
        self._buffer = bytearray()
        self._counter = 0
        self._done = False
        self._trailing = False

    def _open(self, aead: ChaCha20Poly1305, chunk: bytes | memoryview, final: bool) -> bytes:
        out = aead.decrypt(_chunk_nonce(self._counter, final), chunk, None)
        self._counter += 1
        self._done = final
        return out

    def update(self, data: bytes | memoryview) -> list[bytes]:
        """Return the plaintext of every complete chunk buffered so far."""
        self._buffer += data
        if self._aead is None:
            if len(self._buffer) < NONCE_SIZE:
                return []
            self._aead = _payload_key(self._file_key, bytes(self._buffer[:NONCE_SIZE]))
            del self._buffer[:NONCE_SIZE]
        aead = self._aead
        out = []
        taken = 0
        with memoryview(self._buffer) as view:
            while len(view) - taken >= ENCRYPTED_CHUNK_SIZE and not self._done:
                with view[taken : taken + ENCRYPTED_CHUNK_SIZE] as chunk:
                    try:
                        try:
                            out.append(self._open(aead, chunk, final=False))
                        except InvalidTag:
                            out.append(self._open(aead, chunk, final=True))
                    except InvalidTag:
                        raise AuthenticationError() from None
                taken += ENCRYPTED_CHUNK_SIZE
        del self._buffer[:taken]
        if self._done and self._buffer:
            # Data after the final chunk: finish() refuses the stream, but
            # the chunks above did authenticate.
            self._trailing = True
            self._buffer.clear()
        return out

    def finish(self) -> bytes:
        """Open the final chunk; refuse a truncated or padded stream."""
        if self._aead is None:
            raise AuthenticationError()  # not even a nonce
        if self._done:
            if self._trailing:
                raise AuthenticationError()
            return b""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if len(rest) < TAG_SIZE:
            raise AuthenticationError()  # truncated: no final chunk
        if len(rest) == TAG_SIZE and self._counter > 0:
            raise AuthenticationError()  # an empty final chunk after data
        try:
            return self._open(self._aead, rest, final=True)
        except InvalidTag:
            raise AuthenticationError() from None


def decrypt_payload(file_key: bytes, payload: bytes | memoryview) -> bytes:
    """Decrypt a whole payload held in memory."""
    decryptor = PayloadDecryptor(file_key)
    view = memoryview(payload)
    parts = []
    for start in range(0, len(view), 64 * ENCRYPTED_CHUNK_SIZE):
        parts.extend(decryptor.update(view[start : start + 64 * ENCRYPTED_CHUNK_SIZE]))
    parts.append(decryptor.finish())
    return b"".join(parts)
