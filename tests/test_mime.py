"""The raw MIME helpers that bundle parsing stands on."""

from __future__ import annotations

import os

import pytest

from mailseal import mime


def test_base64_stream_equals_stdlib_for_any_piece_layout():
    import base64

    data = os.urandom(57 * 40000 + 13)
    pieces = [data[: 57 * 100], data[57 * 100 : 57 * 30000], data[57 * 30000 :]]
    out = b"".join(mime.base64_stream(pieces, b"\r\n"))
    assert out == base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert b"".join(mime.base64_lines(b"", b"\n")) == b""


@pytest.mark.parametrize("text", [b"QR==", b"QUJ=", b"QQ=", b"Q===", b"QQ==QQ==", b"QQ*=", b"QUJD\nQQ==\nQUJD"])
def test_decode_refuses_non_canonical_and_misplaced_padding(text):
    with pytest.raises(mime.MimeError):
        b"".join(mime.decode_base64(text))


def test_decode_ignores_line_breaks_and_spaces_anywhere():
    assert b"".join(mime.decode_base64(b"QU\r\nJD \t\nRA==\r\n")) == b"ABCD"


def test_decode_across_slice_boundaries():
    import base64

    data = os.urandom(3_000_001)
    text = base64.encodebytes(data)
    assert b"".join(mime.decode_base64(text)) == data


def test_split_head_and_fields():
    head, at = mime.split_head(b"A: 1\r\nB: 2\r\n  folded\r\n\r\nbody")
    assert head == b"A: 1\r\nB: 2\r\n  folded\r\n" and at == len(head) + 2
    assert [(f.name, f.value) for f in mime.fields(head)] == [("A", b" 1"), ("B", b" 2\n  folded")]
    assert mime.split_head(b"no body at all") == (b"no body at all", 14)
    assert mime.split_head(b"\nbody") == (b"", 1)


def test_find_parts_ignores_lookalike_lines():
    body = (b"preamble\r\n--b\r\nC: 1\r\n\r\none\r\n--bx not a delimiter\r\n--b  \r\n\r\ntwo\r\n--b--\r\nepilogue")
    parts = mime.find_parts(body, b"b")
    assert [body[s:e] for s, e in parts] == [b"C: 1\r\n\r\none\r\n--bx not a delimiter", b"\r\ntwo"]
    with pytest.raises(mime.MimeError):
        mime.find_parts(b"--b\r\nno close", b"b")


def test_reencode_field_keeps_ascii_verbatim_and_encodes_8bit():
    field = mime.fields(b"To: a@b.test,\r\n c@d.test")[0]
    assert mime.reencode_field(field, b"\r\n") == b"To: a@b.test,\r\n c@d.test\r\n"
    field = mime.fields("From: Jörg <j@x.test>".encode())[0]
    folded = mime.reencode_field(field, b"\n")
    assert folded.isascii() and b"=?utf-8?" in folded and b"<j@x.test>" in folded


@pytest.mark.parametrize("value", [
    b'multipart/encrypted;\r\n protocol="application/vnd.mailseal.keyblob";\r\n boundary="=_mailseal_abc"',
    b"multipart/mixed; boundary=xyz",
    b'multipart/mixed; boundary="a;b" ; x=1',
    b"Multipart/Mixed;BOUNDARY=q",
    b'multipart/mixed; boundary*0="ab"; boundary*1="cd"',
    b"multipart/mixed; (comment) boundary=z",
    b"text",
    b'application/pkcs7-mime; smime-type="enveloped-data"; name=smime.p7m',
])
def test_content_type_parameters_agree_with_the_email_package(value):
    from email.message import Message

    reference = Message()
    reference["Content-Type"] = " ".join(value.decode().split())
    headers = mime.Headers(b"Content-Type: " + value)
    assert headers.content_type() == reference.get_content_type()
    assert headers.boundary() == reference.get_boundary()
    assert headers.param("smime-type") == (reference.get_param("smime-type") or "")
