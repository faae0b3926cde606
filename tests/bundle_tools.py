"""Helpers that take a bundle apart and put it back, as an attacker or a relay would."""

from __future__ import annotations

import base64
import re

from mailseal import mime


def split(bundle: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(before part-1 body, part-1 body, between, part-2 body, after), raw."""
    m = re.search(rb"\r?\n\r?\n([A-Za-z0-9+/=\r\n]+?)(\r?\n--=_mailseal_)", bundle)
    key_start, key_end = m.start(1), m.end(1)
    m2 = re.search(rb"Content-Type: application/octet-stream\r?\nContent-Transfer-Encoding: base64\r?\n\r?\n",
                   bundle[key_end:])
    pay_start = key_end + m2.end()
    pay_end = bundle.index(b"--=_mailseal_", pay_start) - (2 if bundle[: pay_start].endswith(b"\r\n") else 1)
    return (bundle[:key_start], bundle[key_start:key_end], bundle[key_end:pay_start],
            bundle[pay_start:pay_end], bundle[pay_end:])


def decoded_parts(bundle: bytes) -> tuple[bytes, bytes]:
    _, key, _, pay, _ = split(bundle)
    return base64.b64decode(key), base64.b64decode(pay)


def rebuild(bundle: bytes, keyblob: bytes | None = None, payload: bytes | None = None) -> bytes:
    """The bundle with part 1 and/or part 2 replaced by new decoded content."""
    before, key, between, pay, after = split(bundle)
    eol = mime.line_ending(bundle)
    if keyblob is not None:
        key = b"".join(mime.base64_lines(keyblob, eol))[: -len(eol)]
    if payload is not None:
        pay = b"".join(mime.base64_lines(payload, eol))[: -len(eol)]
    return before + key + between + pay + after
