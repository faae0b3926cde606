"""Cross-checks against the TypeScript age by age's author (npm `age-encryption`,
"typage"), the post-quantum reference the design names: it decrypts what we
seal (version 2 bundles: its unknown mailseal stanzas are ignored, as the age
specification says) and we decrypt what it encrypts, with both key kinds.

`make test` installs the package into .venv/node; $MAILSEAL_TYPAGE names
another copy. Without it the module is skipped, except under CI=true, where a
missing install step must fail loudly.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailseal import age, bundle

from .conftest import ROOT
from .corpus import MESSAGES, attachment_message

DRIVER = Path(__file__).parent / "interop" / "typage.mjs"
TYPAGE = Path(os.environ.get("MAILSEAL_TYPAGE",
                             ROOT / ".venv" / "node" / "node_modules" / "age-encryption" / "dist" / "index.js"))
NODE = shutil.which("node")

if NODE is None or not TYPAGE.is_file():
    why = f"typage not installed (node: {NODE}, module: {TYPAGE}); `make test` installs it"
    if os.environ.get("CI") == "true":
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)


def typage(op: str, items: list[dict]) -> list[dict]:
    """One node process for a whole batch (start-up is the expensive part)."""
    out = subprocess.run([NODE, str(DRIVER)], input=json.dumps({"op": op, "items": items}).encode(),
                         capture_output=True, timeout=120, env={**os.environ, "TYPAGE": str(TYPAGE)})
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


NAMES = ["CRLF_PLAIN", "NESTED_MULTIPART", "UTF8_HEADERS", "EMPTY", "BINARY_JUNK"]


def test_typage_opens_our_bundles_of_both_kinds(pq_identity, classic_identity):
    cases = []
    for identity in (pq_identity, classic_identity):
        for name in NAMES:
            cases.append((identity, MESSAGES[name]))
        cases.append((identity, attachment_message(200_000)))  # several STREAM chunks
    items = [{"identity": str(identity),
              "file": b64(bundle.age_file(bundle.seal(message, [identity.recipient()], bind=["bob@b.test"])))}
             for identity, message in cases]
    answers = typage("decrypt", items)
    for (identity, message), answer in zip(cases, answers, strict=True):
        assert "error" not in answer, answer
        assert base64.b64decode(answer["plaintext"]) == message


def test_typage_refuses_a_bundle_for_someone_else(pq_identity, other_identity):
    sealed = bundle.seal(b"x", [pq_identity.recipient()], bind=["bob@b.test"])
    [answer] = typage("decrypt", [{"identity": str(other_identity), "file": b64(bundle.age_file(sealed))}])
    assert "plaintext" not in answer and answer["error"]


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 200_000])
def test_typage_files_open_with_mailseal(size, pq_identity, classic_identity):
    plaintext = os.urandom(size)
    identities = (pq_identity, classic_identity)
    answers = typage("encrypt", [{"recipient": str(i.recipient()), "plaintext": b64(plaintext)} for i in identities])
    for identity, answer in zip(identities, answers, strict=True):
        assert "error" not in answer, answer
        assert age.decrypt(base64.b64decode(answer["file"]), [identity]) == plaintext


def test_keys_are_the_same_strings_both_ways(pq_identity, classic_identity):
    generated = typage("generate", [{"hybrid": True}, {"hybrid": False}])
    for answer, prefix in zip(generated, ("age1pq1", "age1"), strict=True):
        ours = age.parse_identity(answer["identity"])
        assert str(ours.recipient()) == answer["recipient"] and answer["recipient"].startswith(prefix)
    derived = typage("recipient", [{"identity": str(pq_identity)}, {"identity": str(classic_identity)}])
    assert [d["recipient"] for d in derived] == [str(pq_identity.recipient()), str(classic_identity.recipient())]
