"""The sealed message: round trips, transport survival, tampering, outer headers."""

from __future__ import annotations

import re

import pytest

from mailseal import age, bundle, mime

from .bundle_tools import decoded_parts, rebuild, split
from .corpus import MESSAGES, attachment_message

REFUSED = (bundle.MalformedBundle, age.NoIdentityMatch, age.AuthenticationError)


def seal_for(identity, message: bytes, **kw) -> bytes:
    return bundle.seal(message, [identity.recipient()], **kw)


@pytest.mark.parametrize("name", sorted(MESSAGES))
@pytest.mark.parametrize("kind", ["pq", "classic"])
def test_corpus_round_trips_byte_for_byte(name, kind, pq_identity, classic_identity):
    identity = pq_identity if kind == "pq" else classic_identity
    message = MESSAGES[name]
    sealed = seal_for(identity, message)
    opened = bundle.open_sealed(sealed, [identity])
    assert opened.message == message
    assert bundle.is_sealed(sealed)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_sealed_form_is_7bit_short_lined_and_hides_content(name, pq_identity):
    message = MESSAGES[name]
    sealed = seal_for(pq_identity, message)
    assert sealed.isascii()
    assert all(len(line.rstrip(b"\r")) <= 78 for line in sealed.split(b"\n")), "line over 78"
    assert b"\x00" not in sealed
    head, _ = mime.split_head(sealed)
    names = [f.name.lower() for f in mime.fields(head)]
    assert set(names) <= {"from", "to", "cc", "date", "message-id", "subject", "mime-version", "content-type"}
    assert names.count("subject") == 1 and b"Subject: [...]" in head
    # Long enough that random base64 cannot contain them by chance.
    for secret in (b"quarterly numbers", b"Hi Bob,", b"Umlauten", b"?q?caf=E9", b"caf\xe9", b"Subject: nested",
                   b"see attached", b"X-Long:"):
        if secret in message:
            assert secret not in sealed


def test_outer_headers_keep_routing_and_encode_8bit(pq_identity):
    from .corpus import LATIN1_8BIT, UTF8_HEADERS

    sealed = seal_for(pq_identity, UTF8_HEADERS)
    head = mime.Headers(mime.split_head(sealed)[0])
    from email.header import decode_header, make_header

    assert str(make_header(decode_header(head.get("From")))) == "Jörg Müller <joerg@example.de>"
    assert head.get("Date") == "Sun, 29 Nov 2026 10:00:00 +0100"
    assert "Grüße" not in str(make_header(decode_header(head.get("Subject"))))
    assert bundle.open_sealed(seal_for(pq_identity, LATIN1_8BIT), [pq_identity]).message == LATIN1_8BIT


def test_bcc_and_other_headers_stay_inside(pq_identity):
    message = b"From: a@x.test\r\nTo: b@y.test\r\nBcc: hidden@z.test\r\nX-Secret: s\r\n\r\nbody\r\n"
    sealed = seal_for(pq_identity, message)
    assert b"hidden@z.test" not in sealed and b"X-Secret" not in sealed
    assert b"To: b@y.test" in sealed


def test_missing_date_gets_the_sealing_date(pq_identity):
    sealed = seal_for(pq_identity, b"To: b@y.test\r\n\r\nx", now=1_800_000_000)
    assert b"Date: Fri, 15 Jan 2027 08:00:00 +0000" in sealed


def test_date_and_serial_are_visible_and_authenticated(pq_identity):
    sealed = seal_for(pq_identity, b"x", now=1_800_000_000)
    opened = bundle.open_sealed(sealed, [pq_identity])
    assert opened.date == 1_800_000_000
    assert re.fullmatch(r"[0-9a-f]{32}", opened.serial)
    assert f"Mailseal-Serial: {opened.serial}".encode() in sealed
    assert b"Mailseal-Date: Fri, 15 Jan 2027 08:00:00 +0000" in sealed
    key, _ = decoded_parts(sealed)
    assert f"-> {bundle.REPLAY_STANZA} 1800000000 {opened.serial}\n".encode() in key


def test_serials_differ_between_seals(pq_identity):
    serials = {bundle.open_sealed(seal_for(pq_identity, b"x"), [pq_identity]).serial for _ in range(20)}
    assert len(serials) == 20


def test_both_parts_together_are_a_valid_age_file(pq_identity):
    sealed = seal_for(pq_identity, b"hello")
    key, payload = decoded_parts(sealed)
    assert bundle.age_file(sealed) == key + payload
    assert age.decrypt(key + payload, [pq_identity]) == b"hello"


def test_hooks_make_sealing_reproducible(classic_identity):
    def rng_from(seed):
        counter = [seed]

        def rng(n):
            counter[0] += 1
            return bytes((counter[0] * 7 + i) % 256 for i in range(n))

        return rng

    a = seal_for(classic_identity, b"m", now=1, rng=rng_from(1))
    b = seal_for(classic_identity, b"m", now=1, rng=rng_from(1))
    assert a == b


# --- transport -----------------------------------------------------------------

def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


TRANSPORT = {
    "line-endings-flipped": lambda b: b.replace(b"\r\n", b"\n") if b"\r\n" in b else _crlf(b),
    "received-headers-added": lambda b: b"Received: from relay (relay [127.0.0.1])\r\n\tby mx; Sun, 29 Nov 2026\r\n" + b,
    "preamble-replaced": lambda b: re.sub(rb"This message is sealed.*?it has not\.\r?\n",
                                          b"Relay says: this is MIME.\n", b, flags=re.S),
    "epilogue-added": lambda b: b + b"\r\nepilogue added by a list server\r\n",
    "content-type-unfolded": lambda b: re.sub(rb"Content-Type: multipart/encrypted;\r?\n protocol=(\S+)\r?\n boundary=",
                                              rb"Content-Type: multipart/encrypted; protocol=\1 boundary=", b),
    "content-type-refolded": lambda b: b.replace(b"multipart/encrypted;", b"multipart/encrypted;\r\n\t", 1),
    "boundary-padding": lambda b: re.sub(rb"(--=_mailseal_[0-9a-f]+)(\r?\n)", rb"\1  \2", b),
    "base64-rewrapped-64": lambda b: _rewrap(b, 64),
    "header-case-changed": lambda b: b.replace(b"Content-Transfer-Encoding: base64", b"content-transfer-encoding: BASE64"),
}


def _rewrap(sealed: bytes, width: int) -> bytes:
    before, key, between, pay, after = split(sealed)
    eol = mime.line_ending(sealed)

    def wrap(text):
        flat = text.replace(b"\r", b"").replace(b"\n", b"")
        return eol.join(flat[i : i + width] for i in range(0, len(flat), width))

    return before + wrap(key) + between + wrap(pay) + after


@pytest.mark.parametrize("change", sorted(TRANSPORT))
@pytest.mark.parametrize("message", [MESSAGES["CRLF_PLAIN"], MESSAGES["LF_PLAIN"]])
def test_survives_transport_changes(change, message, pq_identity):
    sealed = seal_for(pq_identity, message)
    carried = TRANSPORT[change](sealed)
    assert carried != sealed
    assert bundle.open_sealed(carried, [pq_identity]).message == message


def test_fifty_megabyte_attachment_round_trips(pq_identity):
    message = attachment_message(50 * 1024 * 1024)
    sealed = seal_for(pq_identity, message)
    opened = bundle.open_sealed(sealed, [pq_identity])
    assert opened.size == len(message)
    assert opened.message == message


# --- refusal ---------------------------------------------------------------------

def test_plain_and_pgp_mail_is_not_sealed(pq_identity):
    for name in ("CRLF_PLAIN", "ALREADY_PGP", "EMPTY", "BINARY_JUNK"):
        assert not bundle.is_sealed(MESSAGES[name])
        with pytest.raises(bundle.NotSealed):
            bundle.open_sealed(MESSAGES[name], [pq_identity])


def test_every_byte_of_the_key_blob_is_protected(pq_identity):
    sealed = seal_for(pq_identity, MESSAGES["CRLF_PLAIN"])
    key, payload = decoded_parts(sealed)
    for i in range(len(key)):
        tampered = bytearray(key)
        tampered[i] ^= 0x20 if 0x41 <= key[i] <= 0x7A else 0x01
        with pytest.raises(REFUSED):
            bundle.open_sealed(rebuild(sealed, keyblob=bytes(tampered)), [pq_identity])


def test_every_byte_of_the_payload_is_protected(classic_identity):
    sealed = seal_for(classic_identity, MESSAGES["CRLF_PLAIN"])
    key, payload = decoded_parts(sealed)
    for i in range(len(payload)):
        tampered = bytearray(payload)
        tampered[i] ^= 0x80
        with pytest.raises(age.AuthenticationError):
            bundle.open_sealed(rebuild(sealed, payload=bytes(tampered)), [classic_identity])


def test_every_base64_character_is_protected(classic_identity):
    sealed = seal_for(classic_identity, b"short secret message")
    before, key, between, pay, after = split(sealed)
    for part_index, text in ((1, key), (3, pay)):
        for i, c in enumerate(text):
            if c in b"\r\n":
                continue
            pieces = [before, key, between, pay, after]
            pieces[part_index] = text[:i] + (b"B" if c != ord("B") else b"C") + text[i + 1 :]
            with pytest.raises(REFUSED):
                bundle.open_sealed(b"".join(pieces), [classic_identity])


def test_truncated_and_extended_payload_is_refused(classic_identity):
    sealed = seal_for(classic_identity, b"x" * 100_000)
    key, payload = decoded_parts(sealed)
    for bad in (payload[:-1], payload[:-17], payload[:16], payload + b"\x00" * 3, b""):
        with pytest.raises(REFUSED):
            bundle.open_sealed(rebuild(sealed, payload=bad), [classic_identity])


def test_swapped_key_blobs_are_refused(pq_identity):
    a = seal_for(pq_identity, b"message A")
    b = seal_for(pq_identity, b"message B")
    key_a, _ = decoded_parts(a)
    with pytest.raises(age.AuthenticationError):
        bundle.open_sealed(rebuild(b, keyblob=key_a), [pq_identity])
    # The whole part 1, visible Mailseal headers included, swapped.
    a_before, a_key, *_ = split(a)
    b_before, b_key, b_between, b_pay, b_after = split(b)
    part1_a = a_before[a_before.index(b"--=_mailseal_") :]
    part1_b = b_before[b_before.index(b"--=_mailseal_") :]
    boundary_b = re.search(rb"--(=_mailseal_[0-9a-f]+)", part1_b).group(1)
    boundary_a = re.search(rb"--(=_mailseal_[0-9a-f]+)", part1_a).group(1)
    swapped = (b_before.replace(part1_b, part1_a.replace(boundary_a, boundary_b)) + a_key
               + b_between + b_pay + b_after)
    with pytest.raises(age.AuthenticationError):
        bundle.open_sealed(swapped, [pq_identity])


@pytest.mark.parametrize("edit", [
    lambda s: re.sub(rb"Mailseal-Date: [^\r\n]+", b"Mailseal-Date: Mon, 30 Nov 2026 00:00:00 +0000", s),
    lambda s: re.sub(rb"(Mailseal-Date: [^\r\n]+) \+0000", rb"\1 +0100", s),
    lambda s: re.sub(rb"Mailseal-Serial: ([0-9a-f])", lambda m: b"Mailseal-Serial: " + (b"0" if m.group(1) != b"0" else b"1"), s),
])
def test_changed_visible_date_or_serial_is_refused(edit, pq_identity):
    sealed = seal_for(pq_identity, b"x")
    changed = edit(sealed)
    assert changed != sealed
    with pytest.raises(bundle.BundleMismatch):
        bundle.open_sealed(changed, [pq_identity])


@pytest.mark.parametrize("edit, reason", [
    (lambda s: re.sub(rb"Mailseal-Date: [^\r\n]+\r?\n", b"", s), "lacks"),
    (lambda s: re.sub(rb"Mailseal-Date: [^\r\n]+", b"Mailseal-Date: yesterday", s), "unreadable"),
    (lambda s: s.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: 7bit", 1), "not base64"),
    (lambda s: s[: s.rindex(b"--=_mailseal_")], "closing boundary"),
    (lambda s: re.sub(rb' boundary="[^"]+"', b"", s), "boundary"),
    (lambda s: s.replace(b"application/octet-stream", b"text/plain"), "octet-stream"),
])
def test_malformed_bundles_are_refused_with_a_reason(edit, reason, pq_identity):
    changed = edit(seal_for(pq_identity, b"x"))
    with pytest.raises(bundle.MalformedBundle, match=reason):
        bundle.open_sealed(changed, [pq_identity])


def test_bundle_without_replay_stanza_is_refused(classic_identity):
    """A plain age file in a bundle (no authenticated date/serial) is not accepted."""
    sealed = seal_for(classic_identity, b"x")
    key, payload = decoded_parts(sealed)
    file_key, header = age.encrypt_header([classic_identity.recipient()])
    new_payload = b"".join(age.encrypt_payload(file_key, b"x"))
    with pytest.raises(bundle.MalformedBundle, match="replay stanza"):
        bundle.open_sealed(rebuild(sealed, keyblob=header, payload=new_payload), [classic_identity])


def test_wrong_key_is_no_match(pq_identity, other_identity):
    with pytest.raises(age.NoIdentityMatch):
        bundle.open_sealed(seal_for(pq_identity, b"x"), [other_identity])


def test_line_ending_can_be_imposed(pq_identity):
    lf = MESSAGES["LF_PLAIN"]
    assert b"\r\n" not in seal_for(pq_identity, lf)
    crlf = seal_for(pq_identity, lf, eol=b"\r\n")
    assert crlf.count(b"\n") == crlf.count(b"\r\n")
    assert bundle.open_sealed(crlf, [pq_identity]).message == lf


# --- Version 2: the recipient binding -------------------------------------------

def test_binding_covers_exactly_the_bound_recipients(classic_identity):
    sealed = seal_for(classic_identity, b"x", bind=["bob@b.test", "carol@b.test"])
    for rcpt in ("bob@b.test", "carol@b.test"):
        assert bundle.open_sealed(sealed, [classic_identity], rcpt).message == b"x"
    # The attacker's second RCPT, another mailbox of the same domain, a
    # subaddress or another spelling: none is bound, none gets the plaintext.
    for rcpt in ("eve@b.test", "bob+x@b.test", "bob@b.test.", "Bob@b.test", "carol@c.test", ""):
        with pytest.raises(bundle.NotBound):
            bundle.open_sealed(sealed, [classic_identity], rcpt)


def test_binding_reveals_no_address_and_differs_per_message(classic_identity):
    one = seal_for(classic_identity, b"x", bind=["bob@b.test"])
    two = seal_for(classic_identity, b"x", bind=["bob@b.test"])
    header_one, header_two = decoded_parts(one)[0], decoded_parts(two)[0]
    assert b"bob" not in header_one
    tag = re.search(rb"-> mailseal.org/v2/bind\n(.*)\n", header_one).group(1)
    assert tag not in header_two  # a fresh file key: nothing links two messages to one recipient


def test_binding_order_is_not_the_envelope_order(classic_identity):
    rng_a, rng_b = _fixed_rng(), _fixed_rng()
    a = seal_for(classic_identity, b"x", bind=["bob@b.test", "carol@b.test"], now=0, rng=rng_a)
    b = seal_for(classic_identity, b"x", bind=["carol@b.test", "bob@b.test"], now=0, rng=rng_b)
    assert a == b


def _fixed_rng():
    state = [0]

    def rng(n: int) -> bytes:
        state[0] += 1
        return bytes([state[0] % 256]) * n

    return rng


def test_bundle_without_binding_opens_for_nobody_but_by_hand(classic_identity):
    sealed = seal_for(classic_identity, b"x")
    assert bundle.open_sealed(sealed, [classic_identity]).message == b"x"  # mailseal open
    with pytest.raises(bundle.NotBound):
        bundle.open_sealed(sealed, [classic_identity], "bob@b.test")


def test_stripped_binding_is_refused(classic_identity):
    """A co-recipient who knows the file key rebuilds the header without the
    bind stanza (MAC recomputed): refused as malformed, never opened unbound."""
    sealed = seal_for(classic_identity, b"x", bind=["bob@b.test"])
    file_key = b"k" * 16
    header = age.encode_header([classic_identity.recipient().wrap(file_key),
                                bundle.replay_stanza(1_800_000_000, "a" * 32)], file_key)
    payload = b"".join(age.encrypt_payload(file_key, b"x"))
    with pytest.raises(bundle.MalformedBundle, match="bind stanza"):
        bundle.open_sealed(rebuild(sealed, keyblob=header, payload=payload), [classic_identity], "bob@b.test")


def test_version_1_still_opens_without_binding(classic_identity):
    sealed = seal_for(classic_identity, b"x", version=1)
    opened = bundle.open_sealed(sealed, [classic_identity], "bob@b.test")
    assert (opened.message, opened.version, opened.binding) == (b"x", 1, None)
    assert bundle.open_sealed(seal_for(classic_identity, b"x"), [classic_identity]).version == 2


def test_too_many_stanzas_are_refused_before_any_unwrap(classic_identity):
    file_key = b"k" * 16
    stanzas = [age.X25519Identity.generate().recipient().wrap(file_key) for _ in range(bundle.MAX_STANZAS)]
    stanzas += [classic_identity.recipient().wrap(file_key), bundle.replay_stanza(1_800_000_000, "a" * 32),
                bundle.bind_stanza(file_key, ["bob@b.test"])]
    sealed = seal_for(classic_identity, b"x")
    header = age.encode_header(stanzas, file_key)
    payload = b"".join(age.encrypt_payload(file_key, b"x"))
    with pytest.raises(bundle.MalformedBundle, match="stanzas"):
        bundle.read_keyblob(bundle.split(rebuild(sealed, keyblob=header, payload=payload)))
