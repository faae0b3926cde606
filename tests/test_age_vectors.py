"""The C2SP age conformance vectors, read from ../shared/vectors/age.

scrypt_* vectors are skipped: mailseal has no passphrase recipients.
armor_* vectors are skipped: mailseal carries age files in MIME base64 parts,
never in age's ASCII armor.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest

from mailseal import age
from mailseal.age.header import parse_header
from mailseal.age.stream import NONCE_SIZE, PayloadDecryptor

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "age"
APPLICABLE = ("x25519", "hybrid", "header", "hmac", "stanza", "stream", "version", "empty")
SKIPPED = {"scrypt": "mailseal has no passphrase (scrypt) recipients",
           "armor": "mailseal never uses age's ASCII armor (MIME base64 carries the file)"}


def _vector_names() -> list[str]:
    if not VECTORS.is_dir():
        return []
    return sorted(p.name for p in VECTORS.iterdir() if p.name.split("_")[0] in APPLICABLE)


def load(name: str) -> tuple[dict[str, list[str]], bytes]:
    raw = (VECTORS / name).read_bytes()
    meta_text, _, body = raw.partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in meta_text.decode().splitlines():
        key, _, value = line.partition(": ")
        meta.setdefault(key, []).append(value)
    if meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return meta, body


def outcome(body: bytes, identities) -> tuple[str, bytes]:
    """Run a vector the way the age testkit describes, returning (expect, released plaintext)."""
    released = []
    try:
        header = parse_header(body)
        file_key = age.unwrap_file_key(header, identities)
        if len(body) - header.size < NONCE_SIZE:
            raise age.HeaderError("short nonce")
        decryptor = PayloadDecryptor(file_key)
        payload = memoryview(body)[header.size :]
        for start in range(0, len(payload), 10_000):  # odd slices exercise the buffering
            released.extend(decryptor.update(payload[start : start + 10_000]))
        released.append(decryptor.finish())
    except age.HeaderError:
        return "header failure", b"".join(released)
    except age.NoIdentityMatch:
        return "no match", b"".join(released)
    except age.AuthenticationError:
        return ("payload failure" if "file_key" in locals() else "HMAC failure"), b"".join(released)
    return "success", b"".join(released)


def test_vectors_are_present():
    if not VECTORS.is_dir():
        pytest.skip(f"age conformance vectors not found at {VECTORS} (../shared missing)")
    assert len(_vector_names()) >= 80


@pytest.mark.parametrize("name", _vector_names())
def test_vector(name: str) -> None:
    meta, body = load(name)
    identities = [age.parse_identity(i) for i in meta.get("identity", [])]
    expect = meta["expect"][0]
    got, released = outcome(body, identities)
    assert got == expect
    if "payload" in meta:
        assert hashlib.sha256(released).hexdigest() == meta["payload"][0]


@pytest.mark.parametrize("name", [n for n in _vector_names() if load(n)[0]["expect"][0] == "success"])
def test_success_vectors_through_public_api(name: str) -> None:
    meta, body = load(name)
    identities = [age.parse_identity(i) for i in meta["identity"]]
    assert hashlib.sha256(age.decrypt(body, identities)).hexdigest() == meta["payload"][0]


@pytest.mark.parametrize("name", [n for n in _vector_names() if load(n)[0]["expect"][0] != "header failure"])
def test_header_round_trip(name: str) -> None:
    """Every vector whose header parses re-encodes to the same bytes."""
    from mailseal.age.header import MAC_PREFIX, VERSION_LINE

    _, body = load(name)
    header = parse_header(body)
    again = VERSION_LINE + b"".join(s.encode() for s in header.stanzas) + MAC_PREFIX
    assert again == header.mac_input


def test_skipped_families_are_stated():
    if not VECTORS.is_dir():
        pytest.skip(f"age conformance vectors not found at {VECTORS}")
    families = {p.name.split("_")[0] for p in VECTORS.iterdir() if p.is_file()}
    unknown = families - set(APPLICABLE) - set(SKIPPED) - {"LICENSE", "README.md"}
    assert not unknown, f"new vector families to classify: {unknown}"
