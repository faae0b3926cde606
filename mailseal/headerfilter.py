"""Removing header fields that only the receiving site may write.

Opened mail is the sender's plaintext: whatever header fields it carries, it
carries because the sender put them there. Fields such as
`Authentication-Results: dkim=pass` or `X-Spam-Flag: NO` would land below our
trace header and look like the receiving site's own verdicts, so opened mail
loses every field whose name matches a configured pattern (`[inbound]
strip_headers`). `Mailseal-*` fields are removed from everything the inbound
side delivers, whatever the configuration: nobody may forge our mark.

A header block that starts with a continuation line (space or tab) would
extend the field written above it (our trace header); such lines belong to no
field and are dropped. Everything else stays byte for byte as it came,
folding included.

Lines end at LF, as Postfix and most filters read them. Some readers
(Python's email package among them) also take a bare CR for a line break: a
line that hides a removed field behind a bare CR goes as a whole, so no
reader sees that field, and the line structure the others see stays intact.

Pure: bytes in, bytes out; no SMTP, no configuration files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from . import mime

# Removed from everything the inbound side delivers, whatever the configuration.
ALWAYS = ("Mailseal-*",)

# What receiving sites write for their own verdicts (docs/OPERATIONS.md names
# the tools). A site that uses something else adds it to `strip_headers`.
DEFAULT_STRIP = (
    "Authentication-Results",       # RFC 8601: opendkim, opendmarc, rspamd, policyd-spf
    "ARC-Authentication-Results",   # RFC 8617, the same verdicts in an ARC set
    "Received-SPF",                 # RFC 7208: policyd-spf, postfix-policyd-spf-python
    "X-Spam",                       # rspamd
    "X-Spam-*",                     # SpamAssassin, spamass-milter, amavis, rspamd
    "X-Spamd-*",                    # rspamd (X-Spamd-Result, X-Spamd-Bar)
    "X-Rspamd-*",                   # rspamd
    "X-Virus-*",                    # ClamAV (clamav-milter, clamsmtp), amavis
    "X-Amavis-*",                   # amavis
    "X-Quarantine-ID",              # amavis
    "X-Bogosity",                   # bogofilter
    "X-DSPAM-*",                    # DSPAM
    "X-Greylist",                   # milter-greylist
    "X-MS-Exchange-Organization-*",  # Exchange trusts these from its own hosts
    "X-Forefront-Antispam-Report",  # Exchange Online Protection
    "X-Microsoft-Antispam",         # Exchange Online Protection
    "Mailseal-*",                   # our own trace (also removed without being listed)
)

# A field name is printable ASCII without ":" (RFC 5322 2.2); in a pattern
# "*" is any run of such characters and "?" exactly one.
_NAME_CHAR = rb"[\x21-\x39\x3b-\x7e]"
_PATTERN = re.compile(r"[\x21-\x39\x3b-\x7e]+")
MAX_PATTERNS = 200

# One line with its own ending (LF or CRLF); the last may have none.
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a field-name pattern, or None when it is one."""
    if not isinstance(pattern, str):
        return f"expected a string, got {pattern!r}"
    if not _PATTERN.fullmatch(pattern):
        return (f"{pattern!r} is not a header field name pattern (printable ASCII without spaces "
                f"or \":\"; \"*\" matches any run of characters, \"?\" one)")
    return None


def _name_regex(pattern: str) -> bytes:
    out = []
    for char in pattern:
        if char == "*":
            out.append(_NAME_CHAR + b"*")
        elif char == "?":
            out.append(_NAME_CHAR)
        else:
            out.append(re.escape(char.encode("ascii")))
    return b"".join(out)


class HeaderFilter:
    """Removes the fields named by patterns (glob, case-insensitive) and,
    unless told to keep them (`orphans=True`), leading continuation lines
    from a message's header block."""

    def __init__(self, patterns: Sequence[str], *, orphans: bool = False) -> None:
        for pattern in patterns:
            problem = pattern_problem(pattern)
            if problem:
                raise ValueError(problem)
        names = b"|".join(_name_regex(p) for p in dict.fromkeys(patterns)) or rb"(?!)"
        # obs-syntax allows blanks between the name and the colon (RFC 5322 4.5).
        field = rb"(?:" + names + rb")[ \t]*:"
        self._field = re.compile(field, re.I)
        self._hidden = re.compile(rb"\r" + field, re.I)  # behind a bare CR
        # Anything to do at all: one scan of the header block, no copy.
        self._work = re.compile((rb"" if orphans else rb"\A[ \t]|") + rb"(?:\A|[\r\n])" + field, re.I)
        self._orphans = orphans

    def head(self, head: bytes) -> bytes:
        """The header block (without its ending empty line), filtered."""
        if not self._work.search(head):
            return head
        kept: list[bytes] = []
        dropping = not self._orphans  # a continuation line before any field belongs to none
        for match in _LINE.finditer(head):
            line = match.group()
            hidden = b"\r" in line[:-2] and self._hidden.search(line) is not None
            if line[:1] in (b" ", b"\t"):
                # Goes with its field; one that hides a field goes, and so
                # do the lines that continue the hidden field.
                dropping = dropping or hidden
            else:
                dropping = hidden or self._field.match(line) is not None
            if not dropping:
                kept.append(line)
        return b"".join(kept)

    def message(self, message: bytes) -> bytes:
        """The whole message with its header block filtered."""
        head, _ = mime.split_head(message)
        filtered = self.head(head)
        return message if filtered is head else filtered + message[len(head):]

    def chunks(self, chunks: Sequence[bytes]) -> list[bytes]:
        """A message in pieces (decrypted chunks), filtered, still in pieces.

        The header block may run over the first chunk (a field cut in two
        at the boundary): only the chunks that hold it are joined.
        """
        if not chunks:
            return []
        count = chunks_holding_head(chunks)
        first = chunks[0] if count == 1 else b"".join(chunks[:count])
        return [self.message(first), *chunks[count:]]


def chunks_holding_head(chunks: Sequence[bytes]) -> int:
    """How many leading chunks it takes to hold the header block and the
    empty line after it (all of them when there is none)."""
    tail = b"\n"  # the message starts at a line start
    for index, chunk in enumerate(chunks):
        seam = tail + chunk[:2]  # an empty line across the boundary
        if b"\n\n" in seam or b"\n\r\n" in seam or b"\n\n" in chunk or b"\n\r\n" in chunk:
            return index + 1
        tail = (tail + chunk[-2:])[-2:]
    return len(chunks)


@lru_cache(maxsize=16)
def _compiled(patterns: tuple[str, ...]) -> HeaderFilter:
    return HeaderFilter(patterns)


def for_opened_mail(strip_headers: Sequence[str]) -> HeaderFilter:
    """What opened mail loses: the configured fields and Mailseal-*."""
    return _compiled(ALWAYS + tuple(strip_headers))


def for_clear_mail(strip_headers: Sequence[str], strip_from_clear_mail: bool) -> HeaderFilter:
    """What clear mail loses: Mailseal-*, and the configured fields only when
    asked (by default the site's own checks before mailseal wrote them)."""
    return _compiled(ALWAYS + (tuple(strip_headers) if strip_from_clear_mail else ()))
