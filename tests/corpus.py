"""Real-world shaped messages for round-trip tests: odd MIME, 8-bit and UTF-8
headers, CRLF and LF, dot and From lines, empty bodies, nested multiparts."""

from __future__ import annotations

import base64
import os

CRLF_PLAIN = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from mx.example.org by gw.example.org; Sun, 29 Nov 2026 10:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>, carol@example.net\r\n"
    b"Cc: dave@example.net\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <q4.1@example.org>\r\n"
    b"\r\n"
    b"Hi Bob,\r\n.\r\n..leading dots\r\nFrom the start of a line\r\n>From quoted\r\n"
)

LF_PLAIN = CRLF_PLAIN.replace(b"\r\n", b"\n")

UTF8_HEADERS = (
    "From: Jörg Müller <joerg@example.de>\r\n"
    "To: Zoë Ångström <zoe@example.se>\r\n"
    "Subject: Grüße aus Köln — ünïcödé ✓\r\n"
    "Date: Sun, 29 Nov 2026 10:00:00 +0100\r\n"
    "Message-ID: <ü@example.de>\r\n"
    "\r\n"
    "Körper mit Umlauten.\r\n"
).encode("utf-8")

LATIN1_8BIT = (
    b"From: Fran\xe7ois <francois@example.fr>\n"
    b"To: ren\xe9@example.fr\n"
    b"Subject: caf\xe9\n"
    b"\n"
    b"caf\xe9 cr\xe8me\n"
)

ENCODED_WORDS = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: =?iso-8859-1?q?caf=E9?=\r\n"
    b"\r\n"
    b"x\r\n"
)

FOLDED_HEADERS = (
    b"From: alice@example.org\r\n"
    b"To: a@example.net,\r\n b@example.net,\r\n\tc@example.net\r\n"
    b"Subject: a very long subject that goes on\r\n and on over two lines\r\n"
    b"X-Weird:no-space-after-colon\r\n"
    b"\r\n"
    b"body\r\n"
)

EMPTY_BODY = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: empty\r\n\r\n"
HEADERS_ONLY = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: no blank line"
EMPTY = b""
NO_HEADERS = b"\r\njust a body, no header at all\r\n"
BINARY_JUNK = bytes(range(256)) * 3

NESTED_MULTIPART = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: nested\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"preamble text\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
    b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße\r\n".encode()
    + b"--inner\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="x.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(os.urandom(3000)).replace(b"\n", b"\r\n")
    + b"--outer--\r\nepilogue\r\n"
)

LONG_LINES = (
    b"From: a@example.org\r\nTo: b@example.net\r\nX-Long: " + b"h" * 2000 + b"\r\n\r\n"
    + b"x" * 5000 + b"\r\n"
)

NUL_AND_CR = b"From: a@example.org\r\n\r\nbare\rCR and \x00 NUL and lone\nLF\r\n"

ALREADY_PGP = (
    b"From: a@example.org\r\nTo: b@example.net\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
    b' boundary="b"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n'
    b"Version: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
    b"-----BEGIN PGP MESSAGE-----\r\n...\r\n--b--\r\n"
)

MESSAGES = {
    name: value
    for name, value in globals().items()
    if name.isupper() and isinstance(value, bytes)
}


def attachment_message(size: int) -> bytes:
    """A message with one base64 attachment whose decoded size is `size`."""
    body = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attached\r\n--x\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + body + b"--x--\r\n"
    )
