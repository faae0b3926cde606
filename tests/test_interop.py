"""Cross-checks against independent age implementations: rage (via the pyrage
package) and Go age (Debian's `age` package, installed by `make test`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mailseal import age, bundle

from .corpus import MESSAGES

pyrage = pytest.importorskip("pyrage", reason="pyrage is a test dependency: pip install -e '.[test]'")
AGE_BIN = shutil.which("age")
needs_age = pytest.mark.skipif(AGE_BIN is None, reason="Debian package 'age' not installed (make test installs it)")


@pytest.mark.parametrize("name", ["CRLF_PLAIN", "NESTED_MULTIPART", "UTF8_HEADERS", "EMPTY", "BINARY_JUNK"])
def test_bundle_opens_with_pyrage(name, classic_identity):
    message = MESSAGES[name]
    sealed = bundle.seal(message, [classic_identity.recipient()])
    theirs = pyrage.x25519.Identity.from_str(str(classic_identity))
    assert pyrage.decrypt(bundle.age_file(sealed), [theirs]) == message


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 300_000])
def test_pyrage_files_open_with_mailseal(size, classic_identity):
    plaintext = os.urandom(size)
    recipient = pyrage.x25519.Recipient.from_str(str(classic_identity.recipient()))
    assert age.decrypt(pyrage.encrypt(plaintext, [recipient]), [classic_identity]) == plaintext


def test_pyrage_identity_string_is_ours():
    theirs = pyrage.x25519.Identity.generate()
    ours = age.parse_identity(str(theirs))
    assert str(ours.recipient()) == str(theirs.to_public())


@needs_age
@pytest.mark.parametrize("name", ["CRLF_PLAIN", "LF_PLAIN", "NESTED_MULTIPART", "EMPTY"])
def test_bundle_opens_with_go_age(name, classic_identity, tmp_path):
    message = MESSAGES[name]
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(age.identity_file(classic_identity))
    sealed = bundle.seal(message, [classic_identity.recipient()])
    out = subprocess.run([AGE_BIN, "-d", "-i", str(keyfile)], input=bundle.age_file(sealed),
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == message


@needs_age
def test_go_age_files_and_keys_work_with_mailseal(tmp_path):
    keyfile = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(keyfile)], check=True, capture_output=True)
    identities = age.parse_identities(keyfile.read_text())
    plaintext = os.urandom(200_000)
    recipient = str(identities[0].recipient())
    out = subprocess.run([AGE_BIN, "-r", recipient], input=plaintext, capture_output=True, check=True)
    assert age.decrypt(out.stdout, identities) == plaintext
    # And the other way: a mailseal file to an age-keygen key.
    data = age.encrypt(plaintext, [age.parse_recipient(recipient)])
    back = subprocess.run([AGE_BIN, "-d", "-i", str(keyfile)], input=data, capture_output=True, check=True)
    assert back.stdout == plaintext
