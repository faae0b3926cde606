"""Header protection for S/MIME and PGP/MIME copies (RFC 9788).

The whole original message, every header field included, is the
cryptographic payload; its Content-Type gains the parameter hp="cipher" (the
sender encrypted and protected the headers). The outer message carries only
what routing and display need, exactly as a mailseal bundle does: From, To,
Cc, Date, Message-ID, and Subject "[...]".

`wrap` and `unwrap` are exact inverses for mail mailseal sealed: the
parameter is added as one folded line at the end of the Content-Type field,
or, when the message has no Content-Type (RFC 2045: text/plain, us-ascii),
as the one-line field `Content-Type: text/plain; hp="cipher"` at the end of
the header block. `unwrap` also removes an hp parameter written by another
sender's client, so opened mail never claims a protection it lost.

No SMTP and no SQL here: bytes in, bytes out.
"""

from __future__ import annotations

import re

from . import mime
from .bundle import OUTER_SUBJECT, _outer_headers

HP_PARAM = b'hp="cipher"'
_ADDED_FIELD = b'Content-Type: text/plain; ' + HP_PARAM
# Another sender's hp parameter, anywhere in the Content-Type value.
_FOREIGN_HP = re.compile(rb'[ \t]*;(?:[ \t]|\r?\n[ \t])*hp[ \t]*=[ \t]*(?:"[a-z]*"|[a-z]+)', re.IGNORECASE)


_CONTENT_TYPE = re.compile(rb"content-type[ \t]*:", re.IGNORECASE)


def _content_type_span(message: bytes) -> tuple[int, int, int] | None:
    """(start, end before its line ending, end of the header block) of the
    first Content-Type field, its continuation lines included; start -1 when
    there is none; None for a header block that cannot be taken apart."""
    head, _ = mime.split_head(message)
    try:
        mime.fields(head)  # the same rules as every other reader of the block
    except mime.MimeError:
        return None
    start = end = -1
    pos = 0
    while pos < len(head):
        nl = head.find(b"\n", pos)
        line_end = len(head) if nl < 0 else nl
        text_end = line_end - 1 if line_end > pos and head[line_end - 1] == 0x0D else line_end
        continuation = head[pos : pos + 1] in (b" ", b"\t")
        if start >= 0:
            if not continuation:
                break
            end = text_end
        elif _CONTENT_TYPE.match(head, pos):
            start, end = pos, text_end
        pos = line_end + 1
    return start, end, len(head)


def wrap(message: bytes) -> bytes:
    """The cryptographic payload: the message with hp="cipher" on its Content-Type."""
    eol = mime.line_ending(message)
    span = _content_type_span(message)
    if span is None:
        return message  # unparseable headers: sealed whole, unmarked
    start, end, head_end = span
    if start < 0:
        if head_end and message[head_end - 1] != 0x0A:
            return message  # a header block without a line ending: left as it is
        return message[:head_end] + _ADDED_FIELD + eol + message[head_end:]
    value_end = end - 1 if message[end - 1 : end] == b"\r" else end
    return message[:value_end] + b";" + eol + b" " + HP_PARAM + message[value_end:]


def unwrap(payload: bytes) -> bytes:
    """The message delivered after opening: the payload without its hp parameter."""
    span = _content_type_span(payload)
    if span is None or span[0] < 0:
        return payload
    start, end, _ = span
    value_end = end - 1 if payload[end - 1 : end] == b"\r" else end
    field = payload[start:value_end]
    eol = payload[value_end : payload.find(b"\n", value_end) + 1] or b""
    if field == _ADDED_FIELD:
        return payload[:start] + payload[start + len(field) + len(eol):]
    for ours in (b";\r\n " + HP_PARAM, b";\n " + HP_PARAM):
        if field.endswith(ours):
            return payload[: value_end - len(ours)] + payload[value_end:]
    stripped = _FOREIGN_HP.sub(b"", field)
    return payload[:start] + stripped + payload[value_end:]


def outer_headers(message: bytes, eol: bytes, date: int) -> bytes:
    """From, To, Cc, Date, Message-ID as a bundle keeps them, then Subject [...] and MIME-Version."""
    return _outer_headers(message, eol, date) + b"Subject: " + OUTER_SUBJECT + eol + b"MIME-Version: 1.0" + eol
