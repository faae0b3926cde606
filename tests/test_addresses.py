from __future__ import annotations

import pytest

from mailseal.addresses import (
    AddressError,
    EightBitAddress,
    check_envelope_address,
    fold_local,
    lookup_order,
    parse_address,
    parse_owner,
)


# 252 characters: an address with a one-letter local part is 254, the most SMTP allows.
LONGEST_DOMAIN = ".".join(["b" * 63, "c" * 63, "d" * 63, "e" * 55, "test"])


@pytest.mark.parametrize("text, owner", [
    ("bob@Example.ORG", "bob@example.org"),
    ("<bob@example.org>", "bob@example.org"),
    ("Bob@example.org", "bob@example.org"),  # local parts are folded, as Postfix looks them up
    ("CEO@B.TEST", "ceo@b.test"),
    ("Ceo@B.Test", "ceo@b.test"),
    ("Bob+Lists@B.test", "bob+lists@b.test"),  # the +tag is kept, folded too
    ("jörg@exämple.org", "jörg@xn--exmple-cua.org"),
    ("jörg@xn--exmple-cua.org", "jörg@xn--exmple-cua.org"),
    ("JÖRG@EXÄMPLE.ORG", "jörg@xn--exmple-cua.org"),
    ("Jörg@XN--EXMPLE-CUA.org", "jörg@xn--exmple-cua.org"),
    ("jo\u0308rg@exämple.org", "jörg@xn--exmple-cua.org"),  # decomposed umlaut: NFC
    ("STRASSE@x.test", "strasse@x.test"),
    ("Straße@x.test", "strasse@x.test"),  # full case folding, as str.casefold
    ("a@b.test", "a@b.test"),
    ("a@host.internal", "a@host.internal"),
    ("a@host.lan", "a@host.lan"),
    ("@Example.ORG", "@example.org"),
    ("@exämple.org", "@xn--exmple-cua.org"),
    ("Ops@MailHost", "ops@mailhost"),  # an unqualified internal host, as a gateway serves
    ("A" * 64 + "@b.test", "a" * 64 + "@b.test"),  # the longest local part (RFC 5321: 64)
    ("a@" + LONGEST_DOMAIN, "a@" + LONGEST_DOMAIN),  # the longest address: 254 characters
])
def test_normalisation(text, owner):
    assert parse_owner(text) == owner


@pytest.mark.parametrize("text", ["", "bob", "bob@", "@", "a@@b.test", "a b@c.test", "@bad domain", "bob@-x.test",
                                  "ab@" + LONGEST_DOMAIN,  # an address over 254 characters
                                  "<bob@b.test", "bob@b.test>"])  # brackets come in pairs, or the address is wrong
def test_invalid_addresses(text):
    with pytest.raises(AddressError):
        parse_owner(text)


def test_owner_and_mailbox_are_canonical_for_every_spelling():
    spellings = ["CEO+Board@B.TEST", "ceo+board@b.test", "Ceo+BOARD@B.Test", "<cEO+board@b.tEST>"]
    assert {parse_address(s).owner for s in spellings} == {"ceo+board@b.test"}
    assert {parse_address(s).mailbox for s in spellings} == {"ceo@b.test"}
    assert parse_address("Bob@B.test").mailbox == "bob@b.test"
    assert parse_address("+x@a.test").mailbox == "+x@a.test"  # "+" at the start is no subaddress
    # the same canonical address is one value (the keystore caches lookups by it)
    assert parse_address("CEO@b.test") == parse_address("ceo@B.TEST")


def test_fold_local():
    assert fold_local("MiXeD.Case+Tag") == "mixed.case+tag"
    assert fold_local("ÅSA") == "åsa" and fold_local("ÅSA") == fold_local("A\u030asa")
    assert fold_local("ΣΊΣΥΦΟΣ") == fold_local("σίσυφος")


def test_lookup_order():
    assert lookup_order(parse_address("bob+lists@Sub.Example.org")) == [
        "bob+lists@sub.example.org", "bob@sub.example.org", "@sub.example.org"]
    assert lookup_order(parse_address("bob@sub.example.org"), parent_domains=True) == [
        "bob@sub.example.org", "@sub.example.org", "@example.org"]
    # "+" alone or at the start is not a subaddress
    assert lookup_order(parse_address("+x@a.test")) == ["+x@a.test", "@a.test"]


def test_fast_path_agrees_with_email_validator():
    """Wherever the quick check answers, email-validator gives the same owner."""
    import random

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mailseal import addresses

    def full(text):
        try:
            result = addresses._validate(text)
        except AddressError:
            return None
        return f"{fold_local(result.local_part)}@{result.ascii_domain.lower()}"

    def fast(text):
        quick = addresses._everyday(text)
        return quick.owner if quick else None

    pieces = ["a", "B", "Q", "0", ".", "-", "+", "_", "x", "!", "'", "..", "@", "é", " ", "~", "9z"]
    rng = random.Random(7)
    samples = ["bob@example.org", "Bob.Smith+tag@Sub.Example.ORG", "a@b.c0", "a@localhost.local", "a@x.onion",
               "a..b@x.test", ".a@x.test", "a.@x.test", "a@-x.test", "a@x-.test", "a@x.t", "x" * 65 + "@a.test",
               "a@" + "b" * 64 + ".test", "a@" + ".".join(["c" * 60] * 5) + ".test", "a@b.123", "a@b.xn--p1ai"]
    for _ in range(3000):
        local = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        domain = ".".join("".join(rng.choice(pieces[:8]) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3)))
        samples.append(f"{local}@{domain}{rng.choice(['.test', '.org', '.local', '', '.c'])}")
    checked = 0
    for text in samples:
        quick = fast(text)
        if quick is not None:
            checked += 1
            assert full(text) == quick, text
    assert checked > 40

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(addresses._EVERYDAY, fullmatch=True))
    def agree(text):
        quick = fast(text)
        if quick is not None:
            assert full(text) == quick, text

    agree()


@pytest.mark.parametrize("text, smtputf8", [
    ("a@b.test", False), ("first.last+tag@sub.b.test", False), ('"john doe"@b.test', False),
    ('"quoted\\"pair"@b.test', False), ("a@[127.0.0.1]", False), ("a@[IPv6:::1]", False), ("postmaster@b", False),
    ("jörg@exämple.test", True), ('"jö rg"@b.test', True),
])
def test_envelope_addresses_that_are_mailboxes(text, smtputf8):
    check_envelope_address(text, smtputf8)


@pytest.mark.parametrize("text, smtputf8, error", [
    ('"junk junk"', False, AddressError),  # what the SMTP parser makes of `MAIL FROM: junk junk`
    ("a\rb@b.test", False, AddressError), ('"a\rb"@b.test', False, AddressError),
    ('"a\nb"@b.test', True, AddressError), ('"a\x00"@b.test', False, AddressError),
    ("a\x7f@b.test", False, AddressError), ('"a\\\x01"@b.test', False, AddressError),
    ("a\u0085@b.test", True, AddressError),  # a C1 control (NEL)
    ("a\udcff@b.test", True, AddressError),  # a byte that was not UTF-8
    ("a.@b.test", False, AddressError), ("a..b@b.test", False, AddressError), ("a@-b.test", False, AddressError),
    ("a b@b.test", False, AddressError), ("@b.test", False, AddressError), ("a@", False, AddressError),
    ("jörg@b.test", False, EightBitAddress), ("a@exämple.test", False, EightBitAddress),
])
def test_envelope_addresses_refused(text, smtputf8, error):
    with pytest.raises(error) as caught:
        check_envelope_address(text, smtputf8)
    assert text not in str(caught.value)  # never repeated into a reply or a log


def test_labels_with_hyphens_at_3_and_4_take_the_idna_check():
    """Found by the agreement test: `00--0` is a reserved (R-LDH) label, `xn--` must be valid punycode."""
    with pytest.raises(AddressError):
        parse_address("0@00--0.AA")
    with pytest.raises(AddressError):
        parse_address("a@xn--zz.test")
    assert parse_address("JÖRG@xn--exmple-cua.TEST").owner == "jörg@xn--exmple-cua.test"
    assert parse_address("a@a--b.test").owner == "a@a--b.test"
