"""Mail addresses as keys: normalisation and the lookup order.

Addresses are checked with email-validator, without DNS. Special-use and
internal domains (`.test`, `.internal`, `.lan`) are accepted: a gateway
serves them.

The canonical form ("owner") is the one spelling used for every lookup,
binding and stored row: the domain in lower-case ASCII (IDNA), the local part
case-folded as Postfix folds it for table lookups: ASCII lower case for an
ASCII local part, Unicode full case folding (`str.casefold`) then NFC for a
UTF-8 one. So `CEO@B.test`, `ceo@b.TEST` and `Ceo@b.test` are one owner, and
`Jörg@Exämple.org` and `jörg@xn--exmple-cua.org` are another. A `+tag`
subaddress stays in the owner (it may have keys or a policy of its own);
`Address.mailbox` is the owner without it. A whole domain is `@domain`.
RFC 5321 lets a server treat local parts case-sensitively; no mail system in
use does, and treating `CEO@` and `ceo@` as different people would let a
sender's capitalisation choose the policy.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email


class AddressError(ValueError):
    """Not a usable mail address or @domain."""


def fold_local(local: str) -> str:
    """A local part in canonical form (see the module docstring)."""
    if local.isascii():
        return local.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", local).casefold())


@dataclass(frozen=True)
class Address:
    local: str  # canonical: case-folded (fold_local)
    domain: str  # canonical: lower-case ASCII (IDNA)

    @property
    def owner(self) -> str:
        """The canonical address, `+tag` kept: keys, policies and bindings use it."""
        return f"{self.local}@{self.domain}"

    @property
    def mailbox(self) -> str:
        """The owner without its `+tag` subaddress (`bob+x@b.test` -> `bob@b.test`)."""
        base, plus, _tag = self.local.partition("+")
        return f"{base}@{self.domain}" if plus and base else self.owner

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
    return Address(match.group(1).lower(), domain)


@lru_cache(maxsize=1 << 16)  # the same addresses come again and again in a mail flow
def _parse_address(text: str) -> Address:
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    quick = _everyday(text)
    if quick is not None:
        return quick
    result = _validate(text)
    return Address(fold_local(result.local_part), result.ascii_domain.lower())


def parse_owner(text: str) -> str:
    """An address or `@domain`, in canonical (stored) form."""
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
    if address.mailbox != address.owner:
        order.append(address.mailbox)
    order.append("@" + address.domain)
    if parent_domains:
        labels = address.domain.split(".")
        order.extend("@" + ".".join(labels[i:]) for i in range(1, len(labels) - 1))
    return order
