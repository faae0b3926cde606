"""The C2SP age conformance vectors, read from ../shared/vectors/age
($MAILSEAL_VECTORS/age when that is set).

scrypt_* vectors are skipped: mailseal has no passphrase recipients.
armor_* vectors are skipped: mailseal carries age files in MIME base64 parts,
never in age's ASCII armor.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from mailseal import age
from mailseal.age.header import parse_header

from .conftest import ROOT

VECTORS = Path(os.environ.get("MAILSEAL_VECTORS") or ROOT.parent / "shared" / "vectors") / "age"
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


def expectation(name: str) -> str:
    return load(name)[0]["expect"][0]


def identities_of(meta: dict[str, list[str]]) -> list:
    return [age.parse_identity(i) for i in meta.get("identity", [])]


def missing_vectors() -> None:
    """Skip on a developer's machine without ../shared; fail in CI, where
    ~150 conformance cases must never disappear silently."""
    message = f"age conformance vectors not found at {VECTORS} (../shared missing; or set MAILSEAL_VECTORS)"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def test_vectors_are_present():
    if not VECTORS.is_dir():
        missing_vectors()
    assert len(_vector_names()) >= 80


@pytest.mark.parametrize("name", _vector_names())
def test_vector_through_decrypt(name: str) -> None:
    """age.decrypt(), as mailseal open uses it: the testkit's expected outcome."""
    meta, body = load(name)
    identities = identities_of(meta)
    try:
        plaintext = age.decrypt(body, identities)
        got = "success"
    except age.HeaderError:
        got = "header failure"
    except age.NoIdentityMatch:
        got = "no match"
    except age.AuthenticationError:
        # Which check refused it: the header MAC (age.unwrap) or the payload.
        try:
            age.unwrap(parse_header(body), identities)
            got = "payload failure"
        except age.AuthenticationError:
            got = "HMAC failure"
    assert got == meta["expect"][0]
    if got == "success":
        assert hashlib.sha256(plaintext).hexdigest() == meta["payload"][0]


STREAMED = [n for n in _vector_names() if expectation(n) in ("success", "payload failure")]


@pytest.mark.parametrize("name, step", [(n, 10_000) for n in STREAMED] +
                         [(n, 1) for n in STREAMED if len(load(n)[1]) < 300_000])  # 16 MB byte by byte: too slow
def test_vector_through_the_streaming_decryptor(name: str, step: int) -> None:
    """age.PayloadDecryptor, as the gateway feeds it base64-decoded pieces:
    in odd slices or one byte at a time, it releases exactly the chunks that
    authenticated (the testkit's payload hash) and refuses the rest."""
    meta, body = load(name)
    header = parse_header(body)
    decryptor = age.PayloadDecryptor(age.unwrap_file_key(header, identities_of(meta)))
    payload = memoryview(body)[header.size :]
    released = []
    try:
        for start in range(0, len(payload), step):
            released.extend(decryptor.update(payload[start : start + step]))
        released.append(decryptor.finish())
        got = "success"
    except age.AuthenticationError:
        got = "payload failure"
    assert got == meta["expect"][0]
    assert hashlib.sha256(b"".join(released)).hexdigest() == meta["payload"][0]


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
        missing_vectors()
    families = {p.name.split("_")[0] for p in VECTORS.iterdir() if p.is_file()}
    unknown = families - set(APPLICABLE) - set(SKIPPED) - {"LICENSE", "README.md"}
    assert not unknown, f"new vector families to classify: {unknown}"
