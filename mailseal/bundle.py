"""The sealed message: an age v1 file inside RFC 1847 multipart/encrypted.

Part 1 (application/vnd.mailseal.keyblob) carries the age header, base64,
with the visible Mailseal-Date and Mailseal-Serial; part 2
(application/octet-stream) carries the age payload, base64. The plaintext is
the whole original message, restored byte for byte on opening. Date and
serial also travel in an extra stanza inside the age header, where the header
MAC authenticates them; opening refuses a bundle whose visible copies differ.

No SMTP and no SQL here: bytes in, bytes out. docs/FORMAT.md is the spec.
"""

from __future__ import annotations

import calendar
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import timezone
from dataclasses import dataclass, field
from typing import BinaryIO

from . import age, mime
from .age import Identity, Recipient, Stanza

KEYBLOB_TYPE = "application/vnd.mailseal.keyblob"
PAYLOAD_TYPE = "application/octet-stream"
REPLAY_STANZA = "mailseal.org/v1/replay"
DATE_HEADER = "Mailseal-Date"
SERIAL_HEADER = "Mailseal-Serial"
OUTER_SUBJECT = b"[...]"
# Outer headers kept for routing and display (RFC 9788 baseline); every
# other header, Subject included, travels only inside the ciphertext.
KEPT_HEADERS = ("from", "to", "cc", "date", "message-id")
PREAMBLE = (
    b"This message is sealed with mailseal (age v1 in RFC 1847 multipart/encrypted).\n"
    b"The receiving mail gateway opens it; if you can read this, it has not.\n"
)
_SERIAL_RE = re.compile(r"[0-9a-f]{32}")
_UNIX_RE = re.compile(r"0|[1-9][0-9]{0,11}")


class BundleError(Exception):
    """Base class: the input cannot be opened as a sealed message."""


class NotSealed(BundleError):
    """The message is not a mailseal bundle at all (pass it on, or say so)."""


class MalformedBundle(BundleError):
    """It claims to be a bundle but is broken: wrong parts, bad encoding, bad header."""


class BundleMismatch(age.AuthenticationError):
    """The visible Mailseal-Date or Mailseal-Serial differs from the authenticated one."""


@dataclass(frozen=True)
class Opened:
    chunks: list[bytes] = field(repr=False)  # the original message, in pieces
    date: int  # authenticated sealing time, Unix seconds
    serial: str  # authenticated 128-bit serial, 32 lowercase hex digits
    identity: Identity = field(repr=False)  # the local key that opened it
    # The age header MAC, hex: what a forger who saw the serial cannot
    # reproduce, so replay claims are keyed on it too.
    tag: str = ""

    @property
    def message(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


def replay_stanza(date: int, serial: str) -> Stanza:
    return Stanza(REPLAY_STANZA, (str(date), serial), b"")


def _outer_headers(message: bytes, eol: bytes, date: int) -> bytes:
    head, _ = mime.split_head(message)
    try:
        kept = [f for f in mime.fields(head) if f.name.lower() in KEPT_HEADERS]
    except mime.MimeError:
        kept = []  # an unparseable header block still gets sealed, whole
    out = [text for text in (mime.reencode_field(f, eol) for f in kept) if text]
    if not any(line.lower().startswith(b"date:") for line in out):
        out.append(b"Date: " + _rfc5322_date(date) + eol)
    return b"".join(out)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rfc5322_date(date: int) -> bytes:
    """RFC 5322 date in UTC, with English names whatever the locale."""
    t = time.gmtime(date)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000").encode()


def write_sealed(
    message: bytes,
    recipients: Sequence[Recipient],
    out: BinaryIO,
    *,
    now: float | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    eol: bytes | None = None,
) -> tuple[int, str]:
    """Seal message for recipients, writing the bundle to out as it is made.

    Returns (date, serial). The bundle's line ending is `eol`, or the
    message's own when None (a file sealed by hand stays LF; the gateway
    always asks for CRLF, as SMTP does). `now` and `rng` are test hooks: the
    sealing time in Unix seconds and the source of randomness.
    """
    date = int(time.time() if now is None else now)
    serial = rng(16).hex()
    file_key, age_header = age.encrypt_header(recipients, [replay_stanza(date, serial)], rng)
    boundary = b"=_mailseal_" + rng(12).hex().encode()
    eol = eol or mime.line_ending(message)

    out.write(_outer_headers(message, eol, date))
    out.write(
        b"Subject: " + OUTER_SUBJECT + eol
        + b"MIME-Version: 1.0" + eol
        + b"Content-Type: multipart/encrypted;" + eol
        + b' protocol="' + KEYBLOB_TYPE.encode() + b'";' + eol
        + b' boundary="' + boundary + b'"' + eol
        + eol
        + PREAMBLE.replace(b"\n", eol)
        + eol
        + b"--" + boundary + eol
        + b"Content-Type: " + KEYBLOB_TYPE.encode() + eol
        + b"Content-Transfer-Encoding: base64" + eol
        + DATE_HEADER.encode() + b": " + _rfc5322_date(date) + eol
        + SERIAL_HEADER.encode() + b": " + serial.encode() + eol
        + eol
    )
    for lines in mime.base64_lines(age_header, eol):
        out.write(lines)
    out.write(
        b"--" + boundary + eol
        + b"Content-Type: " + PAYLOAD_TYPE.encode() + eol
        + b"Content-Transfer-Encoding: base64" + eol
        + eol
    )
    for lines in mime.base64_stream(age.encrypt_payload(file_key, message, rng), eol):
        out.write(lines)
    out.write(b"--" + boundary + b"--" + eol)
    return date, serial


def seal(
    message: bytes,
    recipients: Sequence[Recipient],
    *,
    now: float | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    eol: bytes | None = None,
) -> bytes:
    """Seal message for recipients and return the whole bundle."""
    buffer = io.BytesIO()
    write_sealed(message, recipients, buffer, now=now, rng=rng, eol=eol)
    return buffer.getvalue()


def is_sealed(message: bytes) -> bool:
    """True when the message's top-level type is a mailseal bundle."""
    head, _ = mime.split_head(message)
    if b"multipart/encrypted" not in head.lower():
        return False  # most mail, decided without parsing a header
    headers = mime.Headers(head)
    return headers.content_type() == "multipart/encrypted" and headers.param("protocol").lower() == KEYBLOB_TYPE


@dataclass(frozen=True)
class _Part:
    headers: mime.Headers
    body: memoryview


def split(message: bytes) -> tuple[_Part, _Part]:
    """The key blob and ciphertext parts of a bundle, not yet decoded.

    Raises NotSealed for anything that is not a mailseal bundle (plain mail,
    PGP/MIME) and MalformedBundle for a broken one.
    """
    return _parts(message)


def _parts(message: bytes) -> tuple[_Part, _Part]:
    head, body_at = mime.split_head(message)
    headers = mime.Headers(head)
    if headers.content_type() != "multipart/encrypted":
        raise NotSealed("not a sealed message (no multipart/encrypted)")
    if headers.param("protocol").lower() != KEYBLOB_TYPE:
        raise NotSealed("multipart/encrypted, but not a mailseal bundle (other protocol)")
    boundary = headers.boundary()
    if not boundary:
        raise MalformedBundle("multipart/encrypted without a boundary")
    body = memoryview(message)
    try:
        spans = mime.find_parts(message, boundary.encode("ascii", "replace"), body_at)
    except mime.MimeError as exc:
        raise MalformedBundle(str(exc)) from None
    if len(spans) != 2:
        raise MalformedBundle(f"a bundle has 2 parts, this one has {len(spans)}")
    parts = []
    for start, end in spans:
        raw = bytes(body[start : min(end, start + 65536)])
        part_head, part_body_at = mime.split_head(raw)
        if part_body_at >= len(raw) and end - start > len(raw):
            raise MalformedBundle("part header block is too large")
        parts.append(_Part(mime.Headers(part_head), body[start + part_body_at : end]))
    keyblob, payload = parts
    for part, ctype in ((keyblob, KEYBLOB_TYPE), (payload, PAYLOAD_TYPE)):
        if part.headers.content_type() != ctype:
            raise MalformedBundle(f"expected a {ctype} part")
        if str(part.headers.get("Content-Transfer-Encoding", "")).strip().lower() != "base64":
            raise MalformedBundle(f"the {ctype} part is not base64")
    return keyblob, payload


_OUR_DATE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                       r"(\d{4}) (\d\d):(\d\d):(\d\d) \+0000")


def _parse_date(text: str) -> int:
    """Unix seconds of an RFC 5322 date; our own UTC form without the email package."""
    match = _OUR_DATE.fullmatch(text.strip())
    if match:
        day, month, year, hour, minute, second = match.groups()
        return calendar.timegm((int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute),
                                int(second), 0, 0, 0))
    from email.utils import parsedate_to_datetime

    parsed = parsedate_to_datetime(text)
    if parsed.tzinfo is None:  # "-0000": no zone given; the sealer wrote UTC
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def _visible(part: _Part) -> tuple[int, str]:
    date_text = part.headers.get(DATE_HEADER)
    serial_text = part.headers.get(SERIAL_HEADER)
    if date_text is None or serial_text is None:
        raise MalformedBundle(f"the key blob lacks {DATE_HEADER} or {SERIAL_HEADER}")
    try:
        date = _parse_date(str(date_text))
    except (TypeError, ValueError):
        raise MalformedBundle(f"unreadable {DATE_HEADER}") from None
    return date, str(serial_text).strip().lower()


def _authenticated(header: age.Header) -> tuple[int, str]:
    found = [s for s in header.stanzas if s.type == REPLAY_STANZA]
    if len(found) != 1:
        raise MalformedBundle("the age header must carry exactly one replay stanza")
    stanza = found[0]
    if len(stanza.args) != 2 or stanza.body:
        raise MalformedBundle("malformed replay stanza")
    date, serial = stanza.args
    if not _UNIX_RE.fullmatch(date) or not _SERIAL_RE.fullmatch(serial):
        raise MalformedBundle("malformed replay stanza")
    return int(date), serial


def open_sealed(message: bytes, identities: Sequence[Identity]) -> Opened:
    """Open a bundle: unwrap, authenticate, check Date/serial, decrypt.

    Raises NotSealed, MalformedBundle, age.NoIdentityMatch or
    age.AuthenticationError (BundleMismatch for differing visible copies).
    Nothing of the plaintext is returned unless all of it authenticated.
    """
    return open_parts(_parts(message), identities)


def open_parts(parts: tuple[_Part, _Part], identities: Sequence[Identity]) -> Opened:
    """open_sealed for parts that split() already found."""
    keyblob, payload = parts
    try:
        age_header = b"".join(mime.decode_base64(keyblob.body))
        header = age.parse_header(age_header)
    except (mime.MimeError, age.HeaderError) as exc:
        raise MalformedBundle(f"bad key blob: {exc}") from None
    if header.size != len(age_header):
        raise MalformedBundle("bad key blob: data after the age header")
    visible = _visible(keyblob)
    try:
        file_key, identity = age.unwrap(header, identities)
    except age.HeaderError as exc:
        raise MalformedBundle(f"bad key blob: {exc}") from None
    date, serial = _authenticated(header)
    if visible != (date, serial):
        raise BundleMismatch(
            f"the visible {DATE_HEADER}/{SERIAL_HEADER} differ from the authenticated ones"
        )
    decryptor = age.PayloadDecryptor(file_key)
    chunks: list[bytes] = []
    received = 0
    try:
        for piece in mime.decode_base64(payload.body):
            received += len(piece)
            chunks.extend(decryptor.update(piece))
    except mime.MimeError as exc:
        raise MalformedBundle(f"bad ciphertext part: {exc}") from None
    if received < age.NONCE_SIZE:
        raise MalformedBundle("bad ciphertext part: too short")
    chunks.append(decryptor.finish())
    return Opened(chunks, date, serial, identity, header.mac.hex())


def age_file(message: bytes) -> bytes:
    """Part 1 and part 2 decoded and joined: a plain age file for `age -d`."""
    keyblob, payload = _parts(message)
    try:
        return b"".join([*mime.decode_base64(keyblob.body), *mime.decode_base64(payload.body)])
    except mime.MimeError as exc:
        raise MalformedBundle(str(exc)) from None
