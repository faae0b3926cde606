from __future__ import annotations

import pytest

from mailseal.addresses import AddressError, lookup_order, parse_address, parse_owner


@pytest.mark.parametrize("text, owner", [
    ("bob@Example.ORG", "bob@example.org"),
    ("<bob@example.org>", "bob@example.org"),
    ("Bob@example.org", "Bob@example.org"),  # local parts are case-sensitive
    ("jörg@exämple.org", "jörg@xn--exmple-cua.org"),
    ("jörg@xn--exmple-cua.org", "jörg@xn--exmple-cua.org"),
    ("a@b.test", "a@b.test"),
    ("a@host.internal", "a@host.internal"),
    ("a@host.lan", "a@host.lan"),
    ("@Example.ORG", "@example.org"),
    ("@exämple.org", "@xn--exmple-cua.org"),
])
def test_normalisation(text, owner):
    assert parse_owner(text) == owner


@pytest.mark.parametrize("text", ["", "bob", "bob@", "@", "a@@b.test", "a b@c.test", "@bad domain", "bob@-x.test"])
def test_invalid_addresses(text):
    with pytest.raises(AddressError):
        parse_owner(text)


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
        return f"{result.local_part}@{result.ascii_domain.lower()}"

    def fast(text):
        quick = addresses._everyday(text)
        return quick.owner if quick else None

    pieces = ["a", "B", "0", ".", "-", "+", "_", "x", "!", "'", "..", "@", "é", " ", "~", "9z"]
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
