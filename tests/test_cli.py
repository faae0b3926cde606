"""mailseal keygen / seal / open through the real command line."""

from __future__ import annotations

import os
import stat

import pytest

from mailseal import age

from .bundle_tools import decoded_parts, rebuild
from .conftest import run_cli
from .corpus import MESSAGES


@pytest.fixture()
def keys(tmp_path):
    out = {}
    for name, extra in (("pq", []), ("classic", ["--classic"]), ("other", [])):
        path = tmp_path / f"{name}.key"
        result = run_cli("keygen", "-o", str(path), *extra)
        assert result.returncode == 0, result.stderr
        identity = age.parse_identities(path.read_text())[0]
        assert result.stderr.decode().strip() == f"Public key: {identity.recipient()}"
        out[name] = (path, str(identity.recipient()))
    return out


def test_keygen_writes_age_keygen_format_with_mode_0600(keys):
    path, recipient = keys["pq"]
    text = path.read_text()
    assert text.startswith("# created: ") and f"# public key: {recipient}\n" in text
    assert text.splitlines()[-1].startswith("AGE-SECRET-KEY-PQ-1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    classic_path, classic_recipient = keys["classic"]
    assert classic_recipient.startswith("age1") and not classic_recipient.startswith("age1pq1")


def test_keygen_refuses_to_overwrite(keys):
    path, _ = keys["pq"]
    before = path.read_bytes()
    result = run_cli("keygen", "-o", str(path))
    assert result.returncode == 2
    assert b"not overwriting" in result.stderr and result.stderr.count(b"\n") == 1
    assert path.read_bytes() == before


def test_keygen_to_stdout():
    result = run_cli("keygen")
    assert result.returncode == 0
    assert age.parse_identities(result.stdout.decode())


@pytest.mark.parametrize("kind", ["pq", "classic"])
@pytest.mark.parametrize("name", ["CRLF_PLAIN", "LF_PLAIN", "NESTED_MULTIPART", "EMPTY", "BINARY_JUNK"])
def test_seal_then_open(kind, name, keys):
    path, recipient = keys[kind]
    message = MESSAGES[name]
    sealed = run_cli("seal", "-r", recipient, input=message)
    assert sealed.returncode == 0, sealed.stderr
    opened = run_cli("open", "-i", str(path), input=sealed.stdout)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == message


def test_seal_with_recipients_file_and_several_identities(keys, tmp_path):
    recipients = tmp_path / "team.txt"
    recipients.write_text(f"# team\n{keys['pq'][1]}\n{keys['other'][1]}\n")
    sealed = run_cli("seal", "-R", str(recipients), input=b"Subject: x\n\nhi\n")
    assert sealed.returncode == 0
    for name in ("pq", "other"):
        opened = run_cli("open", "-i", str(keys["classic"][0]), "-i", str(keys[name][0]), input=sealed.stdout)
        assert opened.stdout == b"Subject: x\n\nhi\n"


def _one_line_error(result, status: int, fragment: bytes) -> None:
    assert result.returncode == status
    assert result.stdout == b""
    assert result.stderr.count(b"\n") == 1, result.stderr
    assert fragment in result.stderr
    assert b"Traceback" not in result.stderr


def test_seal_refuses_mixed_recipients(keys):
    result = run_cli("seal", "-r", keys["pq"][1], "-r", keys["classic"][1], input=b"x")
    _one_line_error(result, 2, b"cannot share one message")


@pytest.mark.parametrize("args, fragment", [
    (["seal"], b"no recipient"),
    (["seal", "-r", "age1notakey"], b"bad recipient"),
    (["seal", "-r", "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"], b"private key"),
    (["seal", "-R", "/nonexistent/file"], b"cannot read recipients file"),
    (["open"], b"required"),
    (["open", "-i", "/nonexistent/key"], b"cannot read identity file"),
    (["frobnicate"], b"invalid choice"),
])
def test_usage_errors_are_one_line_exit_2(args, fragment):
    _one_line_error(run_cli(*args, input=b"x"), 2, fragment)


def test_open_refusals(keys, tmp_path):
    path, recipient = keys["pq"]
    sealed = run_cli("seal", "-r", recipient, input=MESSAGES["CRLF_PLAIN"]).stdout
    _one_line_error(run_cli("open", "-i", str(keys["other"][0]), input=sealed), 1, b"none of the given identities")
    _one_line_error(run_cli("open", "-i", str(path), input=MESSAGES["CRLF_PLAIN"]), 2, b"not a sealed message")
    _one_line_error(run_cli("open", "-i", str(path), input=sealed[: len(sealed) // 2]), 2, b"closing boundary")
    key, payload = decoded_parts(sealed)
    tampered = rebuild(sealed, payload=payload[:-1] + bytes([payload[-1] ^ 1]))
    _one_line_error(run_cli("open", "-i", str(path), input=tampered), 1, b"failed authentication")
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("# not a key\nAGE-SECRET-KEY-1QQQQ\n")
    _one_line_error(run_cli("open", "-i", str(bad_key), input=sealed), 2, b"line 2")
    binary_key = tmp_path / "binary.key"
    binary_key.write_bytes(b"\xff\xfe\x00")
    _one_line_error(run_cli("open", "-i", str(binary_key), input=sealed), 2, b"not a text file")


def test_open_writes_no_partial_plaintext_on_late_failure(keys):
    """The first chunks authenticate; the last is corrupted: nothing is written."""
    path, recipient = keys["classic"]
    message = b"Subject: big\n\n" + b"A" * 500_000
    sealed = run_cli("seal", "-r", recipient, input=message).stdout
    key, payload = decoded_parts(sealed)
    tampered = rebuild(sealed, payload=payload[:-5] + bytes([payload[-5] ^ 1]) + payload[-4:])
    result = run_cli("open", "-i", str(path), input=tampered)
    _one_line_error(result, 1, b"failed authentication")


def test_seal_binds_to_and_cc_or_to_option_and_open_for_checks_it(keys):
    path, recipient = keys["pq"]
    message = b"From: a@a.test\r\nTo: Bob <Bob@B.test>\r\nCc: carol@b.test\r\n\r\nhello\r\n"
    by_headers = run_cli("seal", "-r", recipient, input=message)
    by_option = run_cli("seal", "-r", recipient, "--to", "dave@b.test", input=message)
    assert by_headers.returncode == by_option.returncode == 0
    assert by_headers.stderr == by_option.stderr == b""
    for sealed, bound, unbound in ((by_headers.stdout, ("bob@b.test", "carol@b.test"), ("dave@b.test",)),
                                   (by_option.stdout, ("dave@b.test",), ("bob@b.test", "carol@b.test"))):
        for rcpt in bound:
            opened = run_cli("open", "-i", str(path), "--for", rcpt, input=sealed)
            assert (opened.returncode, opened.stdout) == (0, message), opened.stderr
        for rcpt in (*unbound, "eve@b.test"):
            refused = run_cli("open", "-i", str(path), "--for", rcpt, input=sealed)
            assert refused.returncode == 1 and refused.stdout == b""
            assert b"not seal this message for" in refused.stderr and refused.stderr.count(b"\n") == 1


def test_seal_with_an_invalid_to_is_one_line_exit_2(keys):
    _, recipient = keys["pq"]
    result = run_cli("seal", "-r", recipient, "--to", "not an address", input=b"To: x@y.test\r\n\r\nx\r\n")
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.startswith(b"mailseal: error: ") and result.stderr.count(b"\n") == 1
