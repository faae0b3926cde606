"""mailseal's own bundle vectors (tests/vectors/), data with an `expect` field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailseal import age, bundle, signing

from .vectors import make_vectors

FILES = sorted((Path(__file__).parent / "vectors").glob("*.txt"))
EXPECTS = {"success", "not sealed", "malformed", "no match", "tampered", "not bound", *make_vectors.SIGNATURE_OUTCOMES}
SIGNATURE_WORDS = {bundle.SIGNED: "signed", bundle.INVALID: "bad signature", bundle.SIGNER_UNKNOWN: "signer unknown"}


def outcome(data: bytes, identities, rcpt: str) -> tuple[str, bundle.Opened | None]:
    try:
        return "success", bundle.open_sealed(data, identities, rcpt)
    except bundle.NotSealed:
        return "not sealed", None
    except bundle.MalformedBundle:
        return "malformed", None
    except bundle.NotBound:
        return "not bound", None
    except age.NoIdentityMatch:
        return "no match", None
    except age.AuthenticationError:
        return "tampered", None


def test_there_are_vectors_of_every_kind():
    kinds = {make_vectors.parse(f.read_bytes())[0]["expect"] for f in FILES}
    assert kinds == EXPECTS


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_vector(path: Path):
    meta, data = make_vectors.parse(path.read_bytes())
    got, opened = outcome(data, [age.parse_identity(meta["identity"])], meta["rcpt"])
    if got == "success" and "verify-key" in meta:
        keys = [signing.parse_verify_key(meta["verify-key"])]
        signature = opened.signature
        got = "unsigned" if signature is None else SIGNATURE_WORDS[
            signature.check(keys if signature.signer == meta["verify-for"] else [])]
    assert got == meta["expect"], meta["comment"]
    if opened is not None:
        assert hashlib.sha256(opened.message).hexdigest() == meta["payload"]
        assert (opened.date, opened.serial) == (int(meta["date"]), meta["serial"])
        assert opened.version == int(meta["version"])


# Post-quantum vectors use HPKE randomness inside OpenSSL: not reproducible.
REPRODUCIBLE = [f for f in FILES if make_vectors.parse(f.read_bytes())[0]["reproducible"] == "yes"]


@pytest.mark.parametrize("path", REPRODUCIBLE, ids=[f.stem for f in REPRODUCIBLE])
def test_reproducible_vectors_regenerate_identically(path: Path):
    """Pins the wire format: a change to how bundles are written shows here."""
    meta, data = make_vectors.parse(path.read_bytes())
    assert make_vectors.build()[path.stem] == (meta, data)


def test_the_binding_is_computed_as_format_md_says():
    """An independent computation of section 2.1 from the worked example: the
    file key from the recipient stanza, then HKDF and HMAC as written."""
    import hmac as hmac_mod

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from mailseal import mime

    meta, data = make_vectors.parse((Path(__file__).parent / "vectors" / "success_crlf.txt").read_bytes())
    header = age.parse_header(b"".join(mime.decode_base64(make_vectors._parts(data)[0])))
    file_key = age.unwrap_file_key(header, [age.parse_identity(meta["identity"])])
    [bind] = [s for s in header.stanzas if s.type == "mailseal.org/v2/bind"]
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=b"mailseal.org/v2/bind").derive(file_key)
    tag = hmac_mod.new(key, meta["rcpt"].encode(), hashlib.sha256).digest()[:16]
    assert (bind.args, bind.body) == ((), tag)
