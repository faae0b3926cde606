"""The sealed message: an age v1 file inside RFC 1847 multipart/encrypted.

Part 1 (application/vnd.mailseal.keyblob) carries the age header, base64,
with the visible Mailseal-Date and Mailseal-Serial; part 2
(application/octet-stream) carries the age payload, base64. The plaintext is
the whole original message, restored byte for byte on opening. Date and
serial also travel in an extra stanza inside the age header, where the header
MAC authenticates them; opening refuses a bundle whose visible copies differ.
Version 2 also binds the copy's envelope recipients into the header (a MAC of
each canonical address under a key derived from the file key), so the opener
delivers the plaintext only to the recipients the sender sealed it for, and
may carry the sender's signature (a sig stanza, see signed_content) over the
rest of the header and a hash of the payload ciphertext.

No SMTP and no SQL here: bytes in, bytes out. docs/FORMAT.md is the spec.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import timezone
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import age, mime, signing
from .age import Identity, Recipient, Stanza

KEYBLOB_TYPE = "application/vnd.mailseal.keyblob"
PAYLOAD_TYPE = "application/octet-stream"
REPLAY_STANZA = "mailseal.org/v2/replay"
BIND_STANZA = "mailseal.org/v2/bind"
V1_REPLAY_STANZA = "mailseal.org/v1/replay"  # version 1: opened for one more release
SIG_STANZA = "mailseal.org/v2/sig"
# Domain separation of what a sender signs (docs/FORMAT.md section 2.3).
SIG_CONTEXT = b"mailseal.org/v2/sig\x00"
_SIG_SIZES = {signing.HYBRID: signing.ED25519_SIZE + signing.MLDSA65_SIZE, signing.ED25519: signing.ED25519_SIZE}
_SIGNER_RE = re.compile(r"[!-~]{1,255}")
BIND_INFO = b"mailseal.org/v2/bind"
BIND_TAG_SIZE = 16
# More recipient stanzas than this is an attack on the opener's CPU (every
# stanza is tried with every local identity), not a mail: refused unopened.
MAX_STANZAS = 1024
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


class NotBound(BundleError):
    """The bundle is genuine, but the sender did not seal it for this recipient."""


# Outcomes of checking a signature (the trace header's words).
SIGNED, UNSIGNED, INVALID, SIGNER_UNKNOWN = "signed", "unsigned", "signature-invalid", "signer-unknown"


def signed_content(kind: str, signer: str, date: int, serial: str, unsigned_header: bytes,
                   payload_digest: bytes) -> bytes:
    """The bytes a sender signs: context, then each field length-prefixed.

    `unsigned_header` is the whole age header without the sig stanza, with
    its MAC recomputed over what remains: every stanza (so the recipients,
    the replay values and the binding) and, through that MAC, the file key
    itself. `payload_digest` is SHA-256 of the payload ciphertext. Someone
    holding the file key (any co-recipient) can change none of these, so
    cannot re-mint a message under the sender's name; payload encryption is
    not key-committing, which is why the file key is committed here too.
    """
    fields = (kind.encode(), signer.encode(), str(date).encode(), serial.encode(), unsigned_header, payload_digest)
    return SIG_CONTEXT + b"".join(len(f).to_bytes(4, "big") + f for f in fields)


@dataclass(frozen=True)
class Signature:
    """A sig stanza, with the content it must verify against once opened."""

    kind: str
    signer: str  # canonical address, or a domain (no "@")
    value: bytes = field(repr=False)
    content: bytes = field(repr=False)

    @property
    def domain(self) -> str:
        return self.signer.rpartition("@")[2]

    def check(self, keys: Sequence[signing.VerifyKey]) -> str:
        """SIGNED if a key of this kind verifies the signature, SIGNER_UNKNOWN
        when there is no key at all for the signer, INVALID otherwise."""
        if not keys:
            return SIGNER_UNKNOWN
        for key in keys:
            if key.kind != self.kind:
                continue  # a composite key never accepts a lesser signature
            try:
                key.verify(self.content, self.value)
            except signing.BadSignature:
                continue
            return SIGNED
        return INVALID


@dataclass(frozen=True)
class Opened:
    chunks: list[bytes] = field(repr=False)  # the original message, in pieces
    date: int  # authenticated sealing time, Unix seconds
    serial: str  # authenticated 128-bit serial, 32 lowercase hex digits
    identity: Identity = field(repr=False)  # the local key that opened it
    # What replay claims are keyed on beside the serial (see replay_tag).
    tag: str = ""
    binding: Binding | None = field(default=None, repr=False)  # None: version 1, unbound
    signature: Signature | None = field(default=None, repr=False)  # None: unsigned

    @property
    def version(self) -> int:
        return 1 if self.binding is None else 2

    @property
    def message(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


def replay_stanza(date: int, serial: str, version: int = 2) -> Stanza:
    return Stanza(REPLAY_STANZA if version == 2 else V1_REPLAY_STANZA, (str(date), serial), b"")


def _bind_key(file_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=BIND_INFO).derive(file_key)


def _bind_tag(key: bytes, address: str) -> bytes:
    return hmac.new(key, address.encode("utf-8"), hashlib.sha256).digest()[:BIND_TAG_SIZE]


def bind_stanza(file_key: bytes, addresses: Sequence[str]) -> Stanza:
    """The recipient binding: a MAC of each canonical address, sorted, so
    an observer learns only how many there are, never who or in what order."""
    key = _bind_key(file_key)
    return Stanza(BIND_STANZA, (), b"".join(sorted({_bind_tag(key, a) for a in addresses})))


@dataclass(frozen=True)
class Binding:
    """The authenticated set of recipients a version 2 bundle is sealed for."""

    key: bytes = field(repr=False)
    tags: frozenset[bytes] = field(repr=False)

    def covers(self, address: str) -> bool:
        """True when `address` (canonical form) is one the sender bound."""
        return _bind_tag(self.key, address) in self.tags


# Bounds on the outer header work (it is linear, and these keep it small):
# a kept field longer than OUTER_FIELD_LIMIT, or one that would take the
# outer header past OUTER_HEADER_LIMIT, or that cannot be made 7-bit, is
# replaced by a stand-in (dropped for Date and Message-ID; the sealing
# date then stands in for Date). Only the first field of each name is kept,
# as RFC 5322 allows one. The original header travels whole inside.
OUTER_FIELD_LIMIT = 16 * 1024
OUTER_HEADER_LIMIT = 64 * 1024
_STAND_INS = {"from": b"From: undisclosed-sender:;", "to": b"To: undisclosed-recipients:;",
              "cc": b"Cc: undisclosed-recipients:;"}


def _outer_headers(message: bytes, eol: bytes, date: int) -> bytes:
    head, _ = mime.split_head(message)
    try:
        found = mime.fields(head, KEPT_HEADERS)
    except mime.MimeError:
        found = []  # an unparseable header block still gets sealed, whole
    out: dict[str, bytes] = {}
    size = 0
    for field in found:
        name = field.name.lower()
        if name in out:
            continue
        text = mime.reencode_field(field, eol) if len(field.raw) <= OUTER_FIELD_LIMIT else None
        if text is None or size + len(text) > OUTER_HEADER_LIMIT:
            text = _STAND_INS[name] + eol if name in _STAND_INS else b""
        out[name] = text
        size += len(text)
    if not out.get("date"):
        out["date"] = b"Date: " + _rfc5322_date(date) + eol
    return b"".join(out.values())


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
    bind: Sequence[str] = (),
    version: int = 2,
    signer: tuple[str, signing.SigningKey] | None = None,
) -> tuple[int, str]:
    """Seal message for recipients, writing the bundle to out as it is made.

    Returns (date, serial). `bind` lists the envelope recipients (canonical
    addresses) the copy is for: a gateway opens it only for them, so a copy
    with none bound opens only by hand (`mailseal open`). The bundle's line
    ending is `eol`, or the message's own when None (a file sealed by hand
    stays LF; the gateway always asks for CRLF, as SMTP does). `now` and
    `rng` are test hooks: the sealing time in Unix seconds and the source of
    randomness; `version=1` writes the previous format, for tests only.
    `signer` is (name, key): the sender's address or domain and its signing key.
    """
    date = int(time.time() if now is None else now)
    serial = rng(16).hex()
    age.check_recipients(recipients)
    file_key = rng(age.FILE_KEY_SIZE)
    stanzas = [r.wrap(file_key, rng) for r in recipients] + [replay_stanza(date, serial, version)]
    if version == 2:
        stanzas.append(bind_stanza(file_key, bind))
    elif version != 1 or bind:
        raise ValueError("version 1 bundles have no recipient binding")
    boundary = b"=_mailseal_" + rng(12).hex().encode()
    eol = eol or mime.line_ending(message)
    payload_rng = rng
    if signer is not None:
        if version != 2:
            raise ValueError("only version 2 bundles are signed")
        # The signature covers the payload ciphertext, which is written after
        # the header: encrypt it twice (the same nonce, so the same bytes),
        # hashing the first pass, rather than hold it all in memory.
        nonce = rng(age.NONCE_SIZE)
        payload_rng = lambda _size: nonce  # noqa: E731
        digest = hashlib.sha256()
        for piece in age.encrypt_payload(file_key, message, payload_rng):
            digest.update(piece)
        name, key = signer
        content = signed_content(key.kind, name, date, serial, age.encode_header(stanzas, file_key), digest.digest())
        stanzas.append(Stanza(SIG_STANZA, (key.kind, name), key.sign(content)))
    age_header = age.encode_header(stanzas, file_key)

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
    for lines in mime.base64_stream(age.encrypt_payload(file_key, message, payload_rng), eol):
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
    bind: Sequence[str] = (),
    version: int = 2,
    signer: tuple[str, signing.SigningKey] | None = None,
) -> bytes:
    """Seal message for recipients and return the whole bundle."""
    buffer = io.BytesIO()
    write_sealed(message, recipients, buffer, now=now, rng=rng, eol=eol, bind=bind, version=version, signer=signer)
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

    try:
        parsed = parsedate_to_datetime(text)
        if parsed.tzinfo is None:  # "-0000": no zone given; the sealer wrote UTC
            parsed = parsed.replace(tzinfo=timezone.utc)
        return int(parsed.timestamp())
    except OverflowError:  # a year beyond what a date can hold: as unreadable as any other
        raise ValueError("date out of range") from None


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


def _authenticated(header: age.Header) -> tuple[int, str, frozenset[bytes] | None]:
    """(date, serial, bind tags) from a header whose MAC verified.

    Version 2 has exactly one v2 replay stanza and one bind stanza; version 1
    exactly one v1 replay stanza and no bind stanza (tags None). Anything
    else is malformed.
    """
    replay = [s for s in header.stanzas if s.type in (REPLAY_STANZA, V1_REPLAY_STANZA)]
    binds = [s for s in header.stanzas if s.type == BIND_STANZA]
    sigs = [s for s in header.stanzas if s.type == SIG_STANZA]
    if len(replay) != 1:
        raise MalformedBundle("the age header must carry exactly one replay stanza")
    stanza = replay[0]
    if len(stanza.args) != 2 or stanza.body:
        raise MalformedBundle("malformed replay stanza")
    date, serial = stanza.args
    if not _UNIX_RE.fullmatch(date) or not _SERIAL_RE.fullmatch(serial):
        raise MalformedBundle("malformed replay stanza")
    if stanza.type == V1_REPLAY_STANZA:
        if binds or sigs:
            raise MalformedBundle("a version 1 bundle has no bind or sig stanza")
        return int(date), serial, None
    if len(binds) != 1 or binds[0].args or len(binds[0].body) % BIND_TAG_SIZE:
        raise MalformedBundle("a version 2 bundle must carry exactly one well-formed bind stanza")
    if len(sigs) > 1 or any(len(s.args) != 2 or s.args[0] not in _SIG_SIZES or not _SIGNER_RE.fullmatch(s.args[1])
                            or len(s.body) != _SIG_SIZES[s.args[0]] for s in sigs):
        raise MalformedBundle("a version 2 bundle carries at most one well-formed sig stanza")
    body = binds[0].body
    tags = frozenset(body[i : i + BIND_TAG_SIZE] for i in range(0, len(body), BIND_TAG_SIZE))
    return int(date), serial, tags


@dataclass(frozen=True)
class KeyBlob:
    """Part 1 of a bundle, parsed but not yet opened: the age header and the
    visible date and serial. Opening is split in steps so a gateway can try
    each recipient's own identities, then decrypt the payload once."""

    header: age.Header
    visible: tuple[int, str]

    @property
    def recipient_stanzas(self) -> int:
        return sum(1 for s in self.header.stanzas if not s.type.startswith("mailseal.org/"))

    def unwrap(self, identities: Sequence[Identity]) -> tuple[bytes, Identity]:
        """(file key, identity) for the first identity that opens a stanza.

        Raises age.NoIdentityMatch, age.AuthenticationError (MAC), or
        MalformedBundle (a stanza of one of our types that is malformed).
        """
        try:
            return age.unwrap(self.header, identities)
        except age.HeaderError as exc:
            raise MalformedBundle(f"bad key blob: {exc}") from None

    def authenticate(self, file_key: bytes) -> tuple[int, str, Binding | None]:
        """Date, serial and binding after unwrap() found the file key.

        Raises MalformedBundle or BundleMismatch (visible copies differ).
        """
        date, serial, tags = _authenticated(self.header)
        binding = None if tags is None else Binding(_bind_key(file_key), tags)
        if self.visible != (date, serial):
            raise BundleMismatch(
                f"the visible {DATE_HEADER}/{SERIAL_HEADER} differ from the authenticated ones"
            )
        return date, serial, binding

    def signature(self, file_key: bytes, payload_digest: bytes) -> Signature | None:
        """The sig stanza with the content it must verify against (after authenticate)."""
        stanza = next((s for s in self.header.stanzas if s.type == SIG_STANZA), None)
        if stanza is None:
            return None
        date, serial, _ = _authenticated(self.header)
        unsigned = age.encode_header([s for s in self.header.stanzas if s.type != SIG_STANZA], file_key)
        kind, signer = stanza.args
        return Signature(kind, signer, stanza.body, signed_content(kind, signer, date, serial, unsigned, payload_digest))

    @property
    def signed(self) -> bool:
        return any(s.type == SIG_STANZA for s in self.header.stanzas)


def read_keyblob(parts: tuple[_Part, _Part]) -> KeyBlob:
    """Decode and parse part 1; cheap, and bounded whatever the input.

    Raises MalformedBundle (also for more than MAX_STANZAS stanzas).
    """
    keyblob, _ = parts
    try:
        age_header = b"".join(mime.decode_base64(keyblob.body))
        header = age.parse_header(age_header)
    except (mime.MimeError, age.HeaderError) as exc:
        raise MalformedBundle(f"bad key blob: {exc}") from None
    if header.size != len(age_header):
        raise MalformedBundle("bad key blob: data after the age header")
    if len(header.stanzas) > MAX_STANZAS:
        raise MalformedBundle(f"bad key blob: more than {MAX_STANZAS} stanzas")
    return KeyBlob(header, _visible(keyblob))


def decrypt_parts(parts: tuple[_Part, _Part], blob: KeyBlob, file_key: bytes, identity: Identity) -> Opened:
    """Authenticate date, serial and binding, and decrypt part 2 whole.

    Nothing of the plaintext is returned unless all of it authenticated.
    """
    date, serial, binding = blob.authenticate(file_key)
    decryptor = age.PayloadDecryptor(file_key)
    digest = hashlib.sha256() if blob.signed else None  # only a signature needs it
    chunks: list[bytes] = []
    received = 0
    try:
        for piece in mime.decode_base64(parts[1].body):
            received += len(piece)
            if digest is not None:
                digest.update(piece)
            chunks.extend(decryptor.update(piece))
    except mime.MimeError as exc:
        raise MalformedBundle(f"bad ciphertext part: {exc}") from None
    if received < age.NONCE_SIZE:
        raise MalformedBundle("bad ciphertext part: too short")
    chunks.append(decryptor.finish())
    signature = blob.signature(file_key, digest.digest()) if digest is not None else None
    return Opened(chunks, date, serial, identity, replay_tag(blob.header, signature), binding, signature)


def replay_tag(header: age.Header, signature: Signature | None) -> str:
    """What a replay claim is keyed on beside the serial, hex.

    Nobody who merely saw the visible serial can reproduce it, so a forged
    bundle with that serial cannot pre-empt the real one. For a signed bundle
    it is a hash of the signed content, which a co-recipient holding the file
    key cannot vary (moving the sig stanza changes the header MAC, not what
    was signed), so a re-MACed copy is still the same message: a replay. An
    unsigned bundle has no such anchor; its header MAC serves (whoever holds
    the file key could as well mint a new message).
    """
    if signature is not None:
        return "s:" + hashlib.sha256(signature.content).hexdigest()
    return header.mac.hex()


def open_sealed(message: bytes, identities: Sequence[Identity], recipient: str | None = None) -> Opened:
    """Open a bundle: unwrap, authenticate, check Date/serial and binding, decrypt.

    With `recipient` (a canonical address), a version 2 bundle must be bound
    to it (NotBound otherwise); a version 1 bundle has no binding to check.
    Raises NotSealed, MalformedBundle, NotBound, age.NoIdentityMatch or
    age.AuthenticationError (BundleMismatch for differing visible copies).
    Nothing of the plaintext is returned unless all of it authenticated.
    """
    return open_parts(_parts(message), identities, recipient)


def open_parts(parts: tuple[_Part, _Part], identities: Sequence[Identity], recipient: str | None = None) -> Opened:
    """open_sealed for parts that split() already found."""
    blob = read_keyblob(parts)
    file_key, identity = blob.unwrap(identities)
    if recipient is not None:
        _, _, binding = blob.authenticate(file_key)
        if binding is not None and not binding.covers(recipient):
            raise NotBound(f"the sender did not seal this message for {recipient}")
    return decrypt_parts(parts, blob, file_key, identity)


def age_file(message: bytes) -> bytes:
    """Part 1 and part 2 decoded and joined: a plain age file for `age -d`."""
    keyblob, payload = _parts(message)
    try:
        return b"".join([*mime.decode_base64(keyblob.body), *mime.decode_base64(payload.body)])
    except mime.MimeError as exc:
        raise MalformedBundle(str(exc)) from None
