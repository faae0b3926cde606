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
