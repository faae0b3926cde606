"""Mail addresses as keys: normalisation and the lookup order.

Addresses are checked with email-validator, without DNS. Special-use and
internal domains (`.test`, `.internal`, `.lan`) are accepted: a gateway
serves them. The stored form ("owner") of an address is its local part
(NFC-normalised, case kept: RFC 5321 local parts are case-sensitive) and its
domain in lowercase ASCII (IDNA), so `jörg@exämple.org` and
`jörg@xn--exmple-cua.org` are the same owner. A whole domain is `@domain`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email


class AddressError(ValueError):
    """Not a usable mail address or @domain."""


@dataclass(frozen=True)
class Address:
    local: str
    domain: str  # lowercase ASCII (IDNA) form

    @property
    def owner(self) -> str:
        return f"{self.local}@{self.domain}"

    def __str__(self) -> str:
        return self.owner


def _validate(text: str):
    try:
        return validate_email(
            text,
            check_deliverability=False,
            globally_deliverable=False,
            test_environment=True,  # accept .test
            allow_smtputf8=True,
        )
    except EmailNotValidError as exc:
        raise AddressError(f"invalid address {text!r}: {exc}") from None


def parse_address(text: str) -> Address:
    """Normalise one mail address (no display name, no angle brackets)."""
    return _parse_address(text.strip())


# The everyday address, checked without email-validator: an unquoted ASCII
# dot-atom local part and a domain of LDH labels whose top label is
# alphabetic. Anything else (IDN, quoting, odd TLDs, special-use names) takes
# the full check; tests show both paths agree wherever the fast one answers.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EVERYDAY = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})")
_SPECIAL_USE = frozenset({"arpa", "invalid", "local", "localhost", "onion"})


def _everyday(text: str) -> Address | None:
    match = _EVERYDAY.fullmatch(text)
    if not match or len(match.group(1)) > 64 or len(text) > 254:
        return None
    domain = match.group(2).lower()
    if domain.rsplit(".", 1)[1] in _SPECIAL_USE or len(domain) > 253:
        return None
    return Address(match.group(1), domain)


@lru_cache(maxsize=1 << 16)  # the same addresses come again and again in a mail flow
def _parse_address(text: str) -> Address:
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    quick = _everyday(text)
    if quick is not None:
        return quick
    result = _validate(text)
    return Address(result.local_part, result.ascii_domain.lower())


def parse_owner(text: str) -> str:
    """An address or `@domain`, in stored form."""
    text = text.strip()
    if text.startswith("@"):
        return "@" + parse_address("postmaster" + text).domain
    return parse_address(text).owner


def lookup_order(address: Address, parent_domains: bool = False) -> list[str]:
    """The owners to try for an address, most specific first.

    1. the exact address;
    2. the address without its `+tag` subaddress (`bob+lists@x` -> `bob@x`);
    3. the domain, `@x`;
    4. with parent_domains, each parent domain (`@sub.x` -> `@x`), never a
       bare top-level domain.
    """
    order = [address.owner]
    base, plus, _tag = address.local.partition("+")
    if plus and base:
        order.append(f"{base}@{address.domain}")
    order.append("@" + address.domain)
    if parent_domains:
        labels = address.domain.split(".")
        order.extend("@" + ".".join(labels[i:]) for i in range(1, len(labels) - 1))
    return order
