"""Small, exact tools for raw RFC 5322 / MIME bytes.

The standard library's email package re-serialises what it parses; mailseal
must keep the original byte for byte and handle 50 MB bodies without copying
them around, so the few operations it needs are done here on raw bytes.
"""

from __future__ import annotations

import binascii
import functools
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


_HEAD_END = re.compile(rb"\n\r?\n")


def split_head(data: bytes) -> tuple[bytes, int]:
    """Return (header block, offset of the body).

    The header block ends at the first empty line; a message with no empty
    line is all header. The returned block excludes the empty line. One
    search in C: the header block is the sender's to make as long as the
    size limit allows.
    """
    for empty in (b"\n", b"\r\n"):
        if data[: len(empty)] == empty:
            return data[:0], len(empty)
    end = _HEAD_END.search(data)
    if end is None:
        return data, len(data)
    return data[: end.start() + 1], end.end()


@dataclass(frozen=True)
class Field:
    name: str  # as written
    raw: bytes  # the whole field, folding kept, without the final line ending

    @property
    def value(self) -> bytes:
        return self.raw.split(b":", 1)[1]


# Header lookups are regular expressions run in C, never a Python loop over
# the lines, and a header block longer than HEAD_LIMIT is not looked into
# (Postfix keeps 100 KB of header by default): the block is the sender's to
# make as long as the size limit allows, and what the gateway needs from it
# is a handful of fields.
HEAD_LIMIT = 256 * 1024
_CONTINUATION = rb"(?:\n[ \t][^\n]*)*"
# (A block's first line is a field even when it starts with white space.)
_ANY_FIELD = re.compile(rb"(?:\A|^(?![ \t]))([^\n:]*):[^\n]*" + _CONTINUATION, re.M)
# A line that is neither a field nor a continuation (the last, empty "line"
# after the final line feed excepted), or a continuation with nothing before.
_NOT_A_FIELD = re.compile(rb"^(?![ \t]|\r?$)[^:\n]*$|\A[ \t][^:\n]*$", re.M)


@functools.lru_cache(maxsize=64)
def _named_fields(names: tuple[str, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(n.encode("ascii")) for n in names)
    # Around the name, what bytes.strip() would remove (not at the start of
    # a continuation line, which belongs to the field before).
    return re.compile(rb"(?:\A[ \t\r\v\f]*|^(?:[\r\v\f][ \t\r\v\f]*)?)(" + alternatives + rb")[ \t\r\v\f]*:[^\n]*"
                      + _CONTINUATION, re.M | re.I)


def well_formed_head(head: bytes) -> bool:
    """Every line of the block is a field or continues one, and the block is
    no longer than HEAD_LIMIT (a longer one is not looked into at all)."""
    return len(head) <= HEAD_LIMIT and _NOT_A_FIELD.search(head) is None


def fields(head: bytes, names: Iterable[str] | None = None) -> list[Field]:
    """The fields of a header block (only those named, when names are given),
    in order; continuation lines join their field. Raises MimeError for a
    line that is not a field, or a block longer than HEAD_LIMIT."""
    if not well_formed_head(head):
        raise MimeError("header block too long, or a header line without a colon")
    pattern = _ANY_FIELD if names is None else _named_fields(tuple(sorted(n.lower() for n in names)))
    out = []
    for match in pattern.finditer(head):
        raw = match.group(0).replace(b"\r\n", b"\n")
        out.append(Field(match.group(1).strip().decode("ascii", "replace"), raw[:-1] if raw.endswith(b"\r") else raw))
    return out


_PARAM = re.compile(r'\s*;?\s*([!#$%&\'+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\\\]|\\\\.)*"|[^\s;"]+)\s*;?')


class Headers:
    """The few header fields a gateway reads, without the email package's parser.

    `get` returns the first field of that name, unfolded, found by one
    search of the block; Content-Type parameters are parsed by
    email.message.Message (quoting, RFC 2231), but only for that one value.
    A malformed block gives empty headers.
    """

    def __init__(self, head: bytes) -> None:
        self._head = head if well_formed_head(head) else b""
        self._fields: dict[str, str | None] = {}
        self._ctype: Message | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        if name not in self._fields:
            found = _named_fields((name,)).search(self._head)
            value = found.group(0).split(b":", 1)[1].decode("utf-8", "surrogateescape") if found else None
            self._fields[name] = None if value is None else " ".join(value.split())
        value = self._fields[name]
        return default if value is None else value

    def _content_type(self) -> Message:
        if self._ctype is None:
            from email.message import Message

            self._ctype = Message()
            value = self.get("content-type")
            if value is not None:
                self._ctype["Content-Type"] = value
        return self._ctype

    def content_type(self) -> str:
        """Lowercase type/subtype; text/plain when absent or malformed (RFC 2045)."""
        value = self.get("content-type")
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
        value = self.get("content-type")
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


ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc")
_ENCODED_WORD_BYTES = 45  # 60 base64 characters: a 72-character encoded-word (RFC 2047 allows 75)
_MAILBOX = re.compile(r"(.*?)\s*<([!-;=?-~]+)>", re.S)  # display name, then an ASCII <addr-spec>


def reencode_field(field: Field, eol: bytes) -> bytes | None:
    """The field as 7-bit text: verbatim when it already is, else RFC 2047 encoded.

    Only address fields are encoded, mailbox by mailbox (`display name
    <addr-spec>`, the display name as encoded-words; 7-bit mailboxes as they
    are). Returns None for anything else that is not well-formed: the caller
    leaves it out or puts a stand-in (the original travels intact inside the
    ciphertext). Linear in the field's length, whatever it holds: the email
    package's folding is quadratic on some input (runs of backslashes,
    quotes or dots), and this runs on what any sender writes.
    """
    verbatim = eol.join(line.rstrip(b"\r") for line in field.raw.split(b"\n")) + eol
    if _well_formed(verbatim, eol):
        return verbatim
    if field.name.lower() not in ADDRESS_FIELDS:
        return None
    value = field.value.decode("utf-8", "replace")
    encoded = []
    for mailbox in split_addresses(" ".join(value.split())):
        text = _encode_mailbox(mailbox, eol.decode())
        if text is None:
            return None
        encoded.append(text)
    if not encoded:
        return None
    folded = (f"{field.name}: " + ("," + eol.decode() + " ").join(encoded)).encode("ascii", "replace") + eol
    return folded if _well_formed(folded, eol) else None


def split_addresses(value: str) -> list[str]:
    """An address list cut at its top-level commas (not inside a quoted
    string, a comment or <...>), in one pass; empty members dropped."""
    members, start, quoted, escaped, comment, angle = [], 0, False, False, 0, False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or comment):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = True
        elif char == "(":
            comment = 1
        elif char in "<>":
            angle = char == "<"
        elif char == "," and not angle:
            members.append(value[start:i])
            start = i + 1
    members.append(value[start:])
    return [m.strip() for m in members if m.strip()]


def _encode_mailbox(mailbox: str, eol: str) -> str | None:
    """`display name <addr-spec>` with the name in encoded-words; None unless
    the mailbox is 7-bit already or has that shape with a 7-bit address."""
    if mailbox.isascii() and mailbox.isprintable():
        return mailbox
    match = _MAILBOX.fullmatch(mailbox)
    if match is None:
        return None  # an 8-bit address, a group, a comment: not for the outside
    name, address = match.groups()
    if len(name) > 1 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1], flags=re.S)
    if not name:
        return f"<{address}>"
    return (eol + " ").join(encoded_words(name)) + f" <{address}>"


def encoded_words(text: str) -> list[str]:
    """RFC 2047 encoded-words (UTF-8, base64) for text, each short enough
    for a line, never splitting a character."""
    data = text.encode("utf-8", "replace")
    words, start = [], 0
    while start < len(data):
        end = min(start + _ENCODED_WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1  # not inside a UTF-8 sequence
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode() + "?=")
        start = end
    return words


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
