"""Key strings, identity files and the age building blocks."""

from __future__ import annotations

import pytest

from mailseal import age
from mailseal.age import b64, bech32

# Examples from the C2SP age specification.
SPEC_X25519_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_X25519_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
SPEC_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
SPEC_PQ_RECIPIENT_PREFIX = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zrqtzdxz95"
SPEC_PQ_RECIPIENT_SUFFIX = "ykx3qheyty7saeq0d3fzv49zc0k"


def test_spec_x25519_identity_gives_spec_recipient():
    identity = age.parse_identity(SPEC_X25519_IDENTITY)
    assert str(identity.recipient()) == SPEC_X25519_RECIPIENT
    assert str(identity) == SPEC_X25519_IDENTITY


def test_spec_hybrid_identity_gives_spec_recipient():
    identity = age.parse_identity(SPEC_PQ_IDENTITY)
    recipient = str(identity.recipient())
    assert recipient.startswith(SPEC_PQ_RECIPIENT_PREFIX)
    assert recipient.endswith(SPEC_PQ_RECIPIENT_SUFFIX)
    assert age.parse_recipient(recipient) == identity.recipient()


@pytest.mark.parametrize("classic", [False, True])
def test_generated_keys_round_trip_as_strings(classic):
    identity = age.generate(classic=classic)
    again = age.parse_identity(str(identity))
    assert again.secret == identity.secret
    assert age.parse_recipient(str(identity.recipient())) == identity.recipient()
    assert identity.post_quantum is not classic
    assert str(identity).startswith("AGE-SECRET-KEY-1" if classic else "AGE-SECRET-KEY-PQ-1")


def test_identity_repr_never_shows_the_secret(pq_identity, classic_identity):
    for identity in (pq_identity, classic_identity):
        assert str(identity) not in repr(identity)
        assert "SECRET" not in repr(identity)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwJ", "lowercase"),
        ("AGE1ZVKYG2LQZRAA2LNJVQEJ32NKUU0UES2S82HZRYE869XEEXVN73EQUNUJWJ", "lowercase"),
        ("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwq", "checksum"),
        (SPEC_X25519_IDENTITY, "private key"),
        ("ssh-ed25519 AAAA", "SSH keys"),
        ("", "not a valid"),
        ("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqvqyz7hu", "invalid"),
    ],
)
def test_bad_recipient_strings_are_refused_with_a_reason(text, fragment):
    with pytest.raises(age.KeyFormatError, match=fragment):
        age.parse_recipient(text)


def test_wrong_type_hrp_is_refused():
    wrong = bech32.encode("age1xx", bytes(32))
    with pytest.raises(age.KeyFormatError, match="unknown recipient type"):
        age.parse_recipient(wrong)
    with pytest.raises(age.KeyFormatError, match="public key"):
        age.parse_identity(SPEC_X25519_RECIPIENT)


def test_identity_file_as_age_keygen_writes_it(pq_identity, classic_identity):
    text = age.identity_file(pq_identity) + "\n# another\n\n" + age.identity_file(classic_identity)
    assert text.startswith("# created: ")
    assert f"# public key: {pq_identity.recipient()}" in text
    parsed = age.parse_identities(text)
    assert [i.secret for i in parsed] == [pq_identity.secret, classic_identity.secret]


def test_identity_file_errors_name_the_line():
    with pytest.raises(age.KeyFormatError, match="line 2"):
        age.parse_identities(f"# ok\nnot-a-key\n{SPEC_X25519_IDENTITY}\n")
    with pytest.raises(age.KeyFormatError, match="no identity"):
        age.parse_identities("# only comments\n\n")


def test_recipients_file(pq_identity, other_identity):
    text = f"# team\n{pq_identity.recipient()}\n\n{other_identity.recipient()}\n"
    assert age.parse_recipients(text) == [pq_identity.recipient(), other_identity.recipient()]


@pytest.mark.parametrize("text", [b"AAA=", b"AB", b"A", b"AAA\n", b"AA A", b"AAB"])
def test_base64_refuses_padding_and_non_canonical(text):
    with pytest.raises(ValueError):
        b64.decode(text)


def test_base64_round_trip():
    for n in range(40):
        data = bytes(range(n))
        assert b64.decode(b64.encode(data)) == data


def test_bech32_has_no_length_limit():
    data = bytes(range(256)) * 5
    hrp, back = bech32.decode(bech32.encode("age1pq", data))
    assert (hrp, back) == ("age1pq", data)


def test_low_order_check_matches_x25519_all_zero_output():
    """The arithmetic low-order test agrees with OpenSSL's refusal of all-zero
    shared secrets, for every known small-order point and random points."""
    import os

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    from mailseal.age.hybrid import _LOW_ORDER, _P, _low_order

    private = X25519PrivateKey.generate()
    candidates = [u.to_bytes(32, "little") for u in _LOW_ORDER]
    candidates += [(u + _P).to_bytes(32, "little") for u in _LOW_ORDER if u + _P < 2**255]
    candidates += [bytes(c[:31]) + bytes([c[31] | 0x80]) for c in list(candidates)]  # bit 255 set
    candidates += [os.urandom(32) for _ in range(200)]
    for share in candidates:
        try:
            private.exchange(X25519PublicKey.from_public_bytes(share))
            zero = False
        except ValueError:
            zero = True
        assert _low_order(share) == zero, share.hex()
