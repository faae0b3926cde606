"""Header protection (RFC 9788): wrap and unwrap are exact inverses."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from mailseal import mime, protect

CASES = [
    b"From: a@a.test\r\nContent-Type: text/plain;\r\n charset=utf-8\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: a@a.test\nSubject: x\n\nbody\n",
    b"Content-Type: text/plain\r\n\r\nhi",
    b"content-type : text/html\r\nSubject: y\r\n\r\n<p>",
    b"Subject: x\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\ntwo types\r\n",
    b"\r\nno header at all\r\n",
    b"Subject: all header, no line ending",
    b"not a header line\r\n\r\nbody",
]


@pytest.mark.parametrize("message", CASES)
def test_unwrap_restores_the_message(message):
    assert protect.unwrap(protect.wrap(message)) == message


@pytest.mark.parametrize("message", CASES[:6])
def test_wrapped_payload_says_hp_cipher_and_keeps_everything_else(message):
    wrapped = protect.wrap(message)
    headers = mime.Headers(mime.split_head(wrapped)[0])
    assert headers.param("hp") == "cipher"
    assert headers.content_type() == mime.Headers(mime.split_head(message)[0]).content_type()
    assert wrapped.endswith(message[mime.split_head(message)[1]:])


def test_another_senders_hp_parameter_is_removed():
    for text in (b'Content-Type: multipart/mixed; boundary="x"; hp="cipher"\r\n\r\n',
                 b'Content-Type: multipart/mixed; hp=cipher;\r\n boundary="x"\r\n\r\n',
                 b'Content-Type: multipart/mixed; boundary="x";\r\n hp="clear"\r\n\r\n'):
        unwrapped = protect.unwrap(text)
        headers = mime.Headers(mime.split_head(unwrapped)[0])
        assert headers.param("hp") == "" and headers.boundary() == "x"


_header_line = st.one_of(
    st.from_regex(rb"\A(?:[A-Za-z-]{1,12}: [ -~]{0,30}|[ \t][ -~]{1,20})\Z", fullmatch=True),
    st.builds(lambda name, value: name + value, st.sampled_from([b"Content-Type: ", b"content-type:", b"Subject: "]),
              st.from_regex(rb"\A[ -~]{0,30}\Z", fullmatch=True)),
)


@given(lines=st.lists(_header_line, max_size=8), eol=st.sampled_from([b"\r\n", b"\n"]),
       body=st.binary(max_size=40))
def test_round_trip_property(lines, eol, body):
    message = b"".join(line + eol for line in lines) + eol + body
    assert protect.unwrap(protect.wrap(message)) == message
