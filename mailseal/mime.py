"""Small, exact tools for raw RFC 5322 / MIME bytes.

The standard library's email package re-serialises what it parses; mailseal
must keep the original byte for byte and handle 50 MB bodies without copying
them around, so the few operations it needs are done here on raw bytes.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pybase64

from . import parallel

if TYPE_CHECKING:
    from email.message import Message

# The email package is imported where it is used: `mailseal seal` needs it
# only for 8-bit headers, and its import costs the CLI ~15 ms of start-up.

WHITESPACE = b" \t\r\n"
BASE64_LINE_BYTES = 57  # 76 characters a line, as RFC 2045 asks
_ENCODE_BLOCK = BASE64_LINE_BYTES * 16384  # about 930 KB of input a task
_DECODE_SLICE = 1 << 20


class MimeError(ValueError):
    """Raw MIME that cannot be taken apart as RFC 2045/2046 describe."""


def line_ending(data: bytes | memoryview) -> bytes:
    """CRLF or LF, as the first line of data ends (CRLF when there is no line)."""
    end = bytes(data[:4096]).find(b"\n")
    if end > 0 and data[end - 1] == 0x0D:
        return b"\r\n"
    return b"\n" if end >= 0 else b"\r\n"


def split_head(data: bytes) -> tuple[bytes, int]:
    """Return (header block, offset of the body).

    The header block ends at the first empty line; a message with no empty
    line is all header. The returned block excludes the empty line.
    """
    pos = 0
    while pos < len(data):
        if data.startswith(b"\r\n", pos) or data.startswith(b"\n", pos):
            return data[:pos], pos + (2 if data[pos] == 0x0D else 1)
        nl = data.find(b"\n", pos)
        if nl < 0:
            return data, len(data)
        pos = nl + 1
    return data, len(data)


@dataclass(frozen=True)
class Field:
    name: str  # as written
    raw: bytes  # the whole field, folding kept, without the final line ending

    @property
    def value(self) -> bytes:
        return self.raw.split(b":", 1)[1]


def fields(head: bytes) -> list[Field]:
    """Split a header block into fields; continuation lines join their field."""
    out: list[list[bytes]] = []
    for line in head.split(b"\n"):
        line = line[:-1] if line.endswith(b"\r") else line
        if line[:1] in (b" ", b"\t") and out:
            out[-1].append(line)
        elif b":" in line:
            out.append([line])
        elif line:
            raise MimeError("header line without a colon")
    return [Field(lines[0].split(b":", 1)[0].strip().decode("ascii", "replace"), b"\n".join(lines))
            for lines in out]


_PARAM = re.compile(r'\s*;?\s*([!#$%&\'+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\\\]|\\\\.)*"|[^\s;"]+)\s*;?')


class Headers:
    """The few header fields a gateway reads, without the email package's parser.

    `get` returns the first field of that name, unfolded; Content-Type
    parameters are parsed by email.message.Message (quoting, RFC 2231), but
    only for that one value. A malformed block gives empty headers.
    """

    def __init__(self, head: bytes) -> None:
        self._fields: dict[str, str] = {}
        try:
            found = fields(head)
        except MimeError:
            found = []
        for field in found:
            name = field.name.lower()
            if name not in self._fields:
                value = field.value.decode("utf-8", "surrogateescape")
                self._fields[name] = " ".join(value.split())
        self._ctype: Message | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._fields.get(name.lower(), default)

    def _content_type(self) -> Message:
        if self._ctype is None:
            from email.message import Message

            self._ctype = Message()
            value = self._fields.get("content-type")
            if value is not None:
                self._ctype["Content-Type"] = value
        return self._ctype

    def content_type(self) -> str:
        """Lowercase type/subtype; text/plain when absent or malformed (RFC 2045)."""
        value = self._fields.get("content-type")
        if value is None:
            return "text/plain"
        ctype = value.split(";", 1)[0].strip().lower()
        return ctype if ctype.count("/") == 1 and " " not in ctype else "text/plain"

    def param(self, name: str, default: str = "") -> str:
        simple = self.simple_params()
        if simple is not None:
            return simple.get(name.lower(), default)
        try:
            value = self._content_type().get_param(name, default)
        except UnicodeError:  # 8-bit bytes in the parameters: the email package cannot read them
            return default
        return str(value[2] if isinstance(value, tuple) else value)

    def boundary(self) -> str | None:
        return self.param("boundary") or None

    def simple_params(self) -> dict[str, str] | None:
        """Content-Type parameters by a regular expression: the quick path
        for plain `name=value` and `name="value"`. None when the value needs
        the full parser (RFC 2231 `name*=`, comments, odd quoting)."""
        value = self._fields.get("content-type")
        if value is None or "*" in value or "(" in value:
            return None
        _, _, rest = value.partition(";")
        params = {}
        for match in _PARAM.finditer(rest):
            raw = match.group(2)
            params[match.group(1).lower()] = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
        leftover = _PARAM.sub("", rest).strip(" \t;")
        return params if not leftover else None


def _well_formed(folded: bytes, eol: bytes) -> bool:
    """A 7-bit field whose continuation lines all start with white space."""
    if not folded.endswith(eol) or not folded.isascii():
        return False
    lines = folded[: -len(eol)].split(eol)
    return all(
        0 < len(line) <= 998 and b"\r" not in line and b"\n" not in line and b"\x00" not in line
        and (i == 0 or (line[:1] in (b" ", b"\t") and line.strip()))
        for i, line in enumerate(lines)
    )


def reencode_field(field: Field, eol: bytes) -> bytes | None:
    """The field as 7-bit text: verbatim when it already is, else RFC 2047 encoded.

    Returns None for a field that cannot be made well-formed; the caller
    leaves it out (the original travels intact inside the ciphertext).
    """
    verbatim = eol.join(line.rstrip(b"\r") for line in field.raw.split(b"\n")) + eol
    if _well_formed(verbatim, eol):
        return verbatim
    from email import policy as email_policy
    from email.header import Header

    policy = email_policy.SMTP.clone(linesep=eol.decode())
    value = field.value.decode("utf-8", "replace").replace("\x00", "")
    value = " ".join(part.strip() for part in value.replace("\r", "\n").split("\n"))
    candidates = []
    try:
        candidates.append(policy.header_factory(field.name, value).fold(policy=policy).encode("ascii"))
    except Exception:  # noqa: BLE001 - the stdlib address parser crashes on some junk
        pass
    # Not a parseable address list: encode it as plain text instead.
    text = Header(value, "utf-8", header_name=field.name).encode(linesep=eol.decode())
    candidates.append(f"{field.name}: {text}".encode("ascii", "replace") + eol)
    return next((c for c in candidates if _well_formed(c, eol)), None)


def _encode_block(block: memoryview, eol: bytes) -> bytes:
    text = pybase64.encodebytes(block)  # 76-character lines ending in LF, in C
    return text if eol == b"\n" else text.replace(b"\n", eol)


def base64_lines(data: bytes | memoryview, eol: bytes) -> Iterator[bytes]:
    """Base64 of data in 76-character lines, each ending with eol."""
    return base64_stream([data], eol)


def base64_stream(pieces: Iterable[bytes | memoryview], eol: bytes) -> Iterator[bytes]:
    """Base64 lines of the concatenation of pieces, encoded on all cores.

    Every piece but the last must be a multiple of 57 bytes long, so that
    each one (and each block of it) ends on a line boundary.
    """

    def blocks() -> Iterator[memoryview]:
        for piece in pieces:
            view = memoryview(piece)
            if len(view) == 0:
                continue
            for start in range(0, len(view), _ENCODE_BLOCK):
                yield view[start : start + _ENCODE_BLOCK]

    return parallel.imap(lambda block: _encode_block(block, eol), blocks(), inline=_ENCODE_BLOCK)


def decode_base64(text: bytes | memoryview) -> Iterator[bytes]:
    """Decode a base64 body in slices, strictly.

    Line breaks and spaces (which relays may re-wrap) are ignored; any other
    character outside the alphabet, padding before the end, or a
    non-canonical final quantum is an error.
    """
    view = memoryview(text)
    carry = b""
    for start in range(0, len(view), _DECODE_SLICE):
        piece = carry + bytes(view[start : start + _DECODE_SLICE]).translate(None, WHITESPACE)
        last = start + _DECODE_SLICE >= len(view)
        usable = len(piece) if last else len(piece) - len(piece) % 4
        carry = piece[usable:]
        if not last and b"=" in piece[:usable]:
            raise MimeError("base64 padding before the end of the part")
        try:
            decoded = pybase64.b64decode(piece[:usable], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MimeError(f"invalid base64 ({exc})") from None
        if last and usable and piece[usable - 1] == 0x3D:  # "="
            # Canonical only: the unused bits before the padding must be zero,
            # so no two encodings of a part decode to the same bytes.
            tail = piece[usable - 4 : usable]
            if binascii.b2a_base64(binascii.a2b_base64(tail), newline=False) != tail:
                raise MimeError("non-canonical base64")
        yield decoded
    if carry:
        raise MimeError("truncated base64")


def find_parts(body: bytes, boundary: bytes, offset: int = 0) -> list[tuple[int, int]]:
    """Offsets (start, end) of each body part between boundary delimiters.

    The body starts at `offset` (no copy of a large message is made); the
    offsets returned are into `body`. The line ending before a delimiter
    belongs to the delimiter (RFC 2046); transport padding (spaces) after a
    delimiter is allowed; the preamble and epilogue are ignored. Raises
    MimeError unless a close delimiter is found.
    """
    marker = b"--" + boundary
    parts: list[tuple[int, int]] = []
    start = None
    pos = offset
    while True:
        hit = body.find(marker, pos)
        if hit < 0:
            raise MimeError("multipart body has no closing boundary")
        pos = hit + len(marker)
        if hit > offset and body[hit - 1] != 0x0A:
            continue  # not at the start of a line
        close = body.startswith(b"--", pos)
        line_end = body.find(b"\n", pos)
        rest = body[pos + (2 if close else 0) : len(body) if line_end < 0 else line_end]
        if rest.strip(b" \t\r"):
            continue  # the marker is only the beginning of a longer line
        if start is not None:
            end = hit - 1
            if end > start and body[end - 1] == 0x0D:
                end -= 1
            parts.append((start, max(start, end)))
        if close:
            return parts
        if line_end < 0:
            raise MimeError("multipart body ends inside a boundary line")
        start = pos = line_end + 1
