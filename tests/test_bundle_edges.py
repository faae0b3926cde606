"""The bundle at its edges, as an attacker probes them: the limits named in
FORMAT.md and OPERATIONS.md hold to the byte, every malformed stanza is
refused as malformed (never opened, never a traceback), misuse of the
sealing API fails loudly, and an opened message shows nothing in its repr."""

from __future__ import annotations

import re

import pytest

from mailseal import age, bundle, signing

from .bundle_tools import decoded_parts, rebuild
from .vectors.make_vectors import IDENTITY, RCPT, decoded, replace_part, resigned, sealed

NOW = 1_800_000_000
STANZA_LIMIT = 1024  # FORMAT.md 2: more stanzas than this are refused unopened
FIELD_LIMIT = 16 * 1024  # FORMAT.md 3.1: an outer field longer than this (as received) gets a stand-in
OUTER_LIMIT = 64 * 1024  # ... and one that would take the outer fields past this


def outer_header(data: bytes) -> bytes:
    return data.split(b"\n\n", 1)[0] + b"\n"


def folded(first_line: bytes, size: int) -> bytes:
    """A field `first_line` continued by comment lines, exactly `size` bytes
    with its final LF: 7-bit, every line under 998, so copied verbatim."""
    out = first_line + b"\n"
    while size - len(out) > 84:
        out += b" (" + b"c" * 72 + b")\n"
    assert size - len(out) >= 4
    return out + b" (" + b"c" * (size - len(out) - 4) + b")\n"


# --- outer header limits ---------------------------------------------------------

@pytest.mark.parametrize("size, kept", [(FIELD_LIMIT, True), (FIELD_LIMIT + 1, False)])
def test_an_outer_field_is_copied_up_to_16_kib(size, kept):
    to = folded(b"To: bob@b.test", size + 1)  # `size` as received, without its line end
    message = b"From: alice@a.test\n" + to + b"Subject: s\n\nbody\n"
    outer = outer_header(bundle.seal(message, [IDENTITY.recipient()], now=NOW))
    assert (to in outer) is kept
    assert (b"To: undisclosed-recipients:;\n" in outer) is not kept


@pytest.mark.parametrize("extra, kept", [(0, True), (1, False)])
def test_the_outer_fields_stop_at_64_kib(extra, kept):
    """From, To and Cc at 16 KiB each, Date with comments: the Message-ID that
    takes the outer fields past 64 KiB is left out, the others are copied."""
    fields = [folded(b"From: alice@a.test", FIELD_LIMIT), folded(b"To: bob@b.test", FIELD_LIMIT),
              folded(b"Cc: carol@b.test", FIELD_LIMIT), folded(b"Date: Mon, 30 Nov 2026 10:00:00 +0000", 8 * 1024)]
    rest = OUTER_LIMIT - sum(map(len, fields))
    message_id = folded(b"Message-ID: <m@a.test>", rest + extra)
    message = b"".join(fields) + message_id + b"Subject: s\n\nbody\n"
    outer = outer_header(bundle.seal(message, [IDENTITY.recipient()], now=NOW))
    assert all(field in outer for field in fields)
    assert (message_id in outer) is kept
    assert bundle.open_sealed(bundle.seal(message, [IDENTITY.recipient()]), [IDENTITY]).message == message


# --- stanza count ----------------------------------------------------------------

@pytest.mark.parametrize("stanzas, opens", [(STANZA_LIMIT, True), (STANZA_LIMIT + 1, False)])
def test_at_most_1024_stanzas_are_opened(stanzas, opens):
    recipient = IDENTITY.recipient()
    # The replay and bind stanzas count too.
    data = bundle.seal(b"x", [recipient] * (stanzas - 2), bind=[RCPT])
    assert len(age.parse_header(decoded_parts(data)[0]).stanzas) == stanzas
    if opens:
        assert bundle.open_sealed(data, [IDENTITY], RCPT).message == b"x"
    else:
        with pytest.raises(bundle.MalformedBundle, match="more than 1024 stanzas"):
            bundle.open_sealed(data, [IDENTITY], RCPT)


def test_the_key_blob_counts_the_recipient_stanzas():
    """What the gateway multiplies by its identities to decide whether opening
    is costly enough for a thread: recipient stanzas, not ours."""
    data = bundle.seal(b"x", [IDENTITY.recipient()] * 3, bind=[RCPT])
    assert bundle.read_keyblob(bundle.split(data)).recipient_stanzas == 3


# --- malformed stanzas, MACed by someone holding the file key ---------------------

def _replace(stanza_type: str, new):
    def edit(stanzas, _key):
        return [new(s) if s.type == stanza_type else s for s in stanzas]
    return edit


SIGNED = bundle.seal(b"signed\r\n", [IDENTITY.recipient()], bind=[RCPT],
                     signer=("a.test", signing.generate(signing.ED25519)))


@pytest.mark.parametrize("base, edit", [
    # the replay stanza: a third argument, or a body
    (sealed("edges"), _replace(bundle.REPLAY_STANZA, lambda s: age.Stanza(s.type, (*s.args, "x"), s.body))),
    (sealed("edges"), _replace(bundle.REPLAY_STANZA, lambda s: age.Stanza(s.type, s.args, b"body"))),
    # the sig stanza: two of them, an argument too many or too few, an unknown
    # kind, a signer name over 255 characters, a signature of the wrong size
    (SIGNED, lambda st, _k: st + [s for s in st if s.type == bundle.SIG_STANZA]),
    (SIGNED, _replace(bundle.SIG_STANZA, lambda s: age.Stanza(s.type, (*s.args, "x"), s.body))),
    (SIGNED, _replace(bundle.SIG_STANZA, lambda s: age.Stanza(s.type, s.args[:1], s.body))),
    (SIGNED, _replace(bundle.SIG_STANZA, lambda s: age.Stanza(s.type, ("rsa", s.args[1]), s.body))),
    (SIGNED, _replace(bundle.SIG_STANZA, lambda s: age.Stanza(s.type, (s.args[0], "a" * 251 + ".test"), s.body))),
    (SIGNED, _replace(bundle.SIG_STANZA, lambda s: age.Stanza(s.type, s.args, s.body + b"x"))),
])
def test_malformed_mailseal_stanzas_are_refused_unopened(base, edit):
    with pytest.raises(bundle.MalformedBundle):
        bundle.open_sealed(resigned(base, edit), [IDENTITY], RCPT)


def test_a_signed_bundle_opens_with_its_one_sig_stanza():
    opened = bundle.open_sealed(SIGNED, [IDENTITY], RCPT)
    assert opened.message == b"signed\r\n" and opened.signature.signer == "a.test"


# --- the parts -------------------------------------------------------------------

def test_plain_mail_is_not_sealed_and_says_so():
    with pytest.raises(bundle.NotSealed, match="no multipart/encrypted"):
        bundle.open_sealed(b"From: a@a.test\r\nSubject: hi\r\n\r\nhello\r\n", [IDENTITY])


def test_a_part_header_over_64_kib_is_refused():
    data = sealed("edges")
    padded = data.replace(b"Content-Transfer-Encoding: base64\r\nMailseal-Date",
                          b"Content-Transfer-Encoding: base64\r\nX-Pad: " + b"p" * 70_000 + b"\r\nMailseal-Date", 1)
    assert padded != data
    with pytest.raises(bundle.MalformedBundle, match="part header block is too large"):
        bundle.open_sealed(padded, [IDENTITY], RCPT)


def test_a_date_beyond_any_calendar_is_unreadable_not_a_crash():
    data = re.sub(rb"Mailseal-Date: [^\r\n]+", b"Mailseal-Date: Mon, 01 Jan 9999999999999999999 00:00:00 +0000",
                  sealed("edges"))
    with pytest.raises(bundle.MalformedBundle, match="unreadable Mailseal-Date"):
        bundle.open_sealed(data, [IDENTITY], RCPT)


@pytest.mark.parametrize("length, refusal", [(15, bundle.MalformedBundle), (16, age.AuthenticationError)])
def test_a_payload_shorter_than_its_nonce_is_malformed(length, refusal):
    """15 bytes cannot hold the nonce (malformed); the nonce alone is a
    truncated stream (tampered)."""
    data = sealed("edges")
    short = replace_part(data, 1, decoded(data, 1)[:length])
    with pytest.raises(refusal) as info:
        bundle.open_sealed(short, [IDENTITY], RCPT)
    assert isinstance(info.value, bundle.MalformedBundle) == (refusal is bundle.MalformedBundle)


def test_broken_base64_in_the_payload_is_malformed():
    """Whatever came before it decoded, a character outside base64 makes the
    bundle malformed (not a truncated stream)."""
    data = bundle.seal(b"y" * 10_000 + b"\r\n", [IDENTITY.recipient()], bind=[RCPT])
    payload = re.search(rb"octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n", data).end()
    middle = data.index(b"\r\n", payload + 2000) - 10  # well into the base64 lines
    broken = data[:middle] + b"*" + data[middle + 1 :]
    with pytest.raises(bundle.MalformedBundle, match="bad ciphertext part: (?!too short)"):
        bundle.open_sealed(broken, [IDENTITY], RCPT)
    with pytest.raises(bundle.MalformedBundle):
        bundle.age_file(broken)


# --- sealing misuse ----------------------------------------------------------------

def test_sealing_refuses_no_recipient_and_mixed_kinds():
    with pytest.raises(ValueError):
        bundle.seal(b"x", [])
    with pytest.raises(age.MixedRecipientsError):
        bundle.seal(b"x", [age.generate().recipient(), IDENTITY.recipient()])


@pytest.mark.parametrize("kwargs", [
    {"version": 1, "bind": [RCPT]},  # a binding asked for and silently dropped would open for anyone
    {"version": 3},
    {"version": 1, "signer": ("a.test", signing.generate(signing.ED25519))},
])
def test_sealing_refuses_what_the_version_cannot_carry(kwargs):
    with pytest.raises(ValueError):
        bundle.seal(b"x", [IDENTITY.recipient()], **kwargs)


# --- nothing in the repr ---------------------------------------------------------------

def test_an_opened_message_shows_no_content_or_key_in_its_repr():
    secret = b"the merger is off"
    data = bundle.seal(secret + b"\r\n", [IDENTITY.recipient()], bind=[RCPT])
    opened = bundle.open_sealed(data, [IDENTITY], RCPT)
    shown = repr(opened) + repr(opened.binding)
    assert secret.decode() not in shown and "merger" not in shown
    assert "AGE-SECRET-KEY" not in shown
    assert opened.binding.key.hex() not in shown and repr(opened.binding.key)[2:-1] not in shown
