"""age encryption and decryption, with the error kinds a caller relies on."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailseal import age
from mailseal.age.stream import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, payload_size


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]
)
@pytest.mark.parametrize("kind", ["pq", "classic"])
def test_round_trip_around_chunk_boundaries(size, kind, pq_identity, classic_identity):
    identity = pq_identity if kind == "pq" else classic_identity
    plaintext = os.urandom(size)
    data = age.encrypt(plaintext, [identity.recipient()])
    header = age.parse_header(data)
    assert len(data) - header.size == payload_size(size)
    assert age.decrypt(data, [identity]) == plaintext


def test_several_recipients_each_open(pq_identity, other_identity):
    data = age.encrypt(b"to both", [pq_identity.recipient(), other_identity.recipient()])
    assert age.decrypt(data, [pq_identity]) == b"to both"
    assert age.decrypt(data, [other_identity]) == b"to both"


def test_mixing_post_quantum_and_classic_is_refused(pq_identity, classic_identity):
    with pytest.raises(age.MixedRecipientsError):
        age.encrypt(b"x", [pq_identity.recipient(), classic_identity.recipient()])


def test_no_recipient_is_refused():
    with pytest.raises(ValueError):
        age.encrypt(b"x", [])


def test_wrong_key_is_no_match_not_tamper(pq_identity, other_identity, classic_identity):
    data = age.encrypt(b"secret", [pq_identity.recipient()])
    with pytest.raises(age.NoIdentityMatch):
        age.decrypt(data, [other_identity, classic_identity])


def test_second_identity_is_tried(pq_identity, other_identity):
    data = age.encrypt(b"secret", [pq_identity.recipient()])
    assert age.decrypt(data, [other_identity, pq_identity]) == b"secret"


def test_tampered_payload_gives_one_opaque_error(classic_identity):
    data = bytearray(age.encrypt(os.urandom(3 * CHUNK_SIZE), [classic_identity.recipient()]))
    header_size = age.parse_header(bytes(data)).size
    messages = set()
    for offset in (header_size, header_size + 20, header_size + 16 + ENCRYPTED_CHUNK_SIZE + 5, len(data) - 1):
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        with pytest.raises(age.AuthenticationError) as info:
            age.decrypt(bytes(tampered), [classic_identity])
        messages.add(str(info.value))
    assert messages == {age.AuthenticationError.MESSAGE}


def test_tampered_header_fails_the_mac(classic_identity):
    data = age.encrypt(b"x", [classic_identity.recipient()])
    # Insert an extra (ignored) stanza: the MAC no longer matches.
    pos = data.index(b"\n---") + 1
    tampered = data[:pos] + b"-> grease\n\n" + data[pos:]
    with pytest.raises(age.AuthenticationError):
        age.decrypt(tampered, [classic_identity])


def test_truncated_and_extended_payloads_are_refused(classic_identity):
    data = age.encrypt(os.urandom(2 * CHUNK_SIZE + 10), [classic_identity.recipient()])
    for bad in (data[:-1], data[:-11], data[: -(10 + 16)], data + b"\x00"):
        with pytest.raises(age.AuthenticationError):
            age.decrypt(bad, [classic_identity])


def test_rng_hook_makes_encryption_reproducible(classic_identity):
    def fixed_rng(seed: int):
        state = [seed]

        def rng(n: int) -> bytes:
            state[0] += 1
            return bytes((state[0] + i) % 256 for i in range(n))

        return rng

    a = age.encrypt(b"same", [classic_identity.recipient()], rng=fixed_rng(1))
    b = age.encrypt(b"same", [classic_identity.recipient()], rng=fixed_rng(1))
    c = age.encrypt(b"same", [classic_identity.recipient()], rng=fixed_rng(2))
    assert a == b != c


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3 * CHUNK_SIZE // 2))
def test_any_bytes_round_trip(classic_identity, plaintext):
    assert age.decrypt(age.encrypt(plaintext, [classic_identity.recipient()]), [classic_identity]) == plaintext


def test_an_inserted_replayed_dropped_or_swapped_chunk_is_refused(classic_identity):
    """STREAM binds each chunk to its place: a chunk added (random or a copy
    of another), taken out or moved makes the whole file refused."""
    data = age.encrypt(os.urandom(3 * CHUNK_SIZE + 5), [classic_identity.recipient()])
    start = age.parse_header(data).size + age.NONCE_SIZE
    chunk = [data[start + i * ENCRYPTED_CHUNK_SIZE : start + (i + 1) * ENCRYPTED_CHUNK_SIZE] for i in range(3)]
    head, tail = data[:start], data[start + 3 * ENCRYPTED_CHUNK_SIZE :]
    for name, chunks in {"inserted": [chunk[0], os.urandom(ENCRYPTED_CHUNK_SIZE), chunk[1], chunk[2]],
                         "replayed": [chunk[0], chunk[0], chunk[1], chunk[2]],
                         "dropped": [chunk[0], chunk[2]],
                         "swapped": [chunk[1], chunk[0], chunk[2]]}.items():
        with pytest.raises(age.AuthenticationError):
            age.decrypt(head + b"".join(chunks) + tail, [classic_identity])
            pytest.fail(name)


def test_payload_pieces_encode_to_base64_one_by_one():
    """encrypt_payload yields the payload in pieces that MIME base64 (57 bytes
    a line) can encode one at a time, as bundles are written: the same lines
    as encoding the whole payload at once."""
    pieces = [bytes(p) for p in age.encrypt_payload(os.urandom(32), os.urandom(60 * CHUNK_SIZE))]
    assert len(pieces) > 1
    assert b"".join(base64.encodebytes(p) for p in pieces) == base64.encodebytes(b"".join(pieces))
