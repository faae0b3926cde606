"""The age header parser as an attacker feeds it: each malformed header is
refused with its own reason (the one `mailseal open` prints), and the size
limit holds to the byte."""

from __future__ import annotations

import pytest

from mailseal import age
from mailseal.age.header import MAC_PREFIX, VERSION_LINE

HEADER_LIMIT = 1 << 20  # docs/OPERATIONS.md: an age header is at most 1 MiB
MAC_LINE = MAC_PREFIX + b" " + b"A" * 43 + b"\n"  # well-formed; parsing does not check it


def header_of_size(size: int) -> bytes:
    """A well-formed header exactly `size` bytes long: one large stanza of a
    type nobody handles (age ignores it), its body canonical base64 in full
    64-column lines and a shorter last one."""
    for pad in range(8):
        stanza_line = b"-> grease " + b"a" * (pad + 1) + b"\n"
        body = size - len(VERSION_LINE) - len(stanza_line) - len(MAC_LINE)
        full, last = divmod(body, 65)  # 64 characters and a line feed each
        if last >= 1 and (last - 1) % 4 != 1:  # the last line: 0..63 characters, a valid base64 length
            data = VERSION_LINE + stanza_line + (b"A" * 64 + b"\n") * full + b"A" * (last - 1) + b"\n" + MAC_LINE
            assert len(data) == size
            return data
    raise AssertionError(size)


@pytest.mark.parametrize("data, reason", [
    (b"age-encryption.org/v2\n-> X25519 a\nAAAA\n" + MAC_LINE, "unsupported age version"),
    (b"From: alice@a.test\n\nhello\n", "not an age v1 file"),
    (VERSION_LINE + MAC_LINE, "no recipient stanza"),
    (VERSION_LINE + b"-> X25519 abc", "truncated"),
    (VERSION_LINE + b"-> X25519 abc\n", "truncated"),
    (VERSION_LINE + b"-> X25519 abc\nAAAA", "truncated"),
    (VERSION_LINE + b"-> X25519 a\x7fb\nAAAA\n" + MAC_LINE, "malformed stanza arguments"),  # DEL is not visible
    (VERSION_LINE + b"-> X25519 a  b\nAAAA\n" + MAC_LINE, "malformed stanza arguments"),  # an empty argument
    (VERSION_LINE + b"-> X25519 a\n" + b"A" * 65 + b"\n" + MAC_LINE, "stanza body line too long"),
    (VERSION_LINE + b"-> X25519 a\nAAAAA\n" + MAC_LINE, "malformed stanza body"),
    (VERSION_LINE + b"-> X25519 a\nAAAA\n--- " + b"A" * 42 + b"\n", "malformed header MAC"),
    (VERSION_LINE + b"X25519 a\nAAAA\n" + MAC_LINE, "malformed header line"),
])
def test_malformed_headers_are_refused_with_their_reason(data, reason):
    with pytest.raises(age.HeaderError, match=reason):
        age.parse_header(data)


def test_the_header_size_limit_holds_to_the_byte():
    largest = header_of_size(HEADER_LIMIT)
    assert age.parse_header(largest + b"payload").size == HEADER_LIMIT
    with pytest.raises(age.HeaderError, match="too large"):
        age.parse_header(header_of_size(HEADER_LIMIT + 1))
    # HEADER_LIMIT bytes without a line end: too large, not merely truncated
    unended = VERSION_LINE + b"-> X25519 " + b"a" * (HEADER_LIMIT - len(VERSION_LINE) - 10)
    assert len(unended) == HEADER_LIMIT
    with pytest.raises(age.HeaderError, match="too large"):
        age.parse_header(unended)
    with pytest.raises(age.HeaderError, match="truncated"):
        age.parse_header(unended[:-1])
