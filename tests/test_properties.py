"""Property-based tests: any bytes in, the same bytes out; any damage, refused."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailseal import age, bundle

from .bundle_tools import decoded_parts, rebuild

REFUSED = (bundle.BundleError, age.NoIdentityMatch, age.AuthenticationError)
# MAILSEAL_HYPOTHESIS_EXAMPLES=2000 for a deeper run than CI's.
SETTINGS = settings(max_examples=int(os.environ.get("MAILSEAL_HYPOTHESIS_EXAMPLES", "80")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

header_line = st.builds(
    lambda name, value: name + b": " + value,
    st.sampled_from([b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"X-Any", b"Bcc"]),
    st.binary(max_size=120).map(lambda v: v.replace(b"\n", b" ").replace(b"\r", b" ")),
)
messages = st.one_of(
    st.binary(max_size=5000),
    st.builds(
        lambda lines, eol, body: eol.join(lines) + eol + eol + body,
        st.lists(header_line, max_size=8),
        st.sampled_from([b"\r\n", b"\n"]),
        st.binary(max_size=3000),
    ),
)


@SETTINGS
@given(messages)
def test_any_message_round_trips(pq_identity, message):
    sealed = bundle.seal(message, [pq_identity.recipient()])
    assert sealed.isascii()
    assert bundle.open_sealed(sealed, [pq_identity]).message == message


@SETTINGS
@given(st.binary(max_size=2000), st.data())
def test_any_single_byte_change_in_a_part_is_refused(classic_identity, message, data):
    sealed = bundle.seal(message, [classic_identity.recipient()])
    key, payload = decoded_parts(sealed)
    which = data.draw(st.sampled_from(["key", "payload"]))
    target = key if which == "key" else payload
    index = data.draw(st.integers(0, len(target) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = target[:index] + bytes([target[index] ^ flip]) + target[index + 1 :]
    rebuilt = rebuild(sealed, **({"keyblob": changed} if which == "key" else {"payload": changed}))
    try:
        bundle.open_sealed(rebuilt, [classic_identity])
    except REFUSED:
        return
    raise AssertionError("a changed byte was accepted")


@SETTINGS
@given(st.binary(max_size=3000))
def test_arbitrary_input_never_crashes_the_opener(pq_identity, junk):
    for candidate in (junk, b'Content-Type: multipart/encrypted; protocol="application/vnd.mailseal.keyblob"; '
                      b'boundary="b"\r\n\r\n--b\r\n' + junk + b"\r\n--b--\r\n"):
        try:
            bundle.open_sealed(candidate, [pq_identity])
        except REFUSED:
            pass
        else:
            raise AssertionError("junk opened")


@SETTINGS
@given(st.binary(max_size=500), st.data())
def test_damage_anywhere_opens_exactly_or_is_refused(classic_identity, message, data):
    """Insert, delete or replace bytes anywhere in the bundle: the result is
    either the exact original (the damage hit only unauthenticated routing
    headers, the preamble or whitespace) or a clean refusal, never an
    exception of another kind and never different plaintext."""
    sealed = bytearray(bundle.seal(message, [classic_identity.recipient()]))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(sealed) - 1))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.integers(0, 255))
        if action == "insert":
            sealed.insert(pos, byte)
        elif action == "delete":
            del sealed[pos]
        else:
            sealed[pos] = byte
    try:
        opened = bundle.open_sealed(bytes(sealed), [classic_identity])
    except REFUSED:
        return
    assert opened.message == message
