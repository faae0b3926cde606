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
_RESERVED_LDH = re.compile(r"(?:^|\.)[a-z0-9]{2}--")


def _everyday(text: str) -> Address | None:
    match = _EVERYDAY.fullmatch(text)
    if not match or len(match.group(1)) > 64 or len(text) > 254:
        return None
    domain = match.group(2).lower()
    if domain.rsplit(".", 1)[1] in _SPECIAL_USE or len(domain) > 253:
        return None
    if "--" in domain and _RESERVED_LDH.search(domain):
        return None  # "xn--" and other labels with "--" at 3-4: IDNA rules apply (the full check)
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


class EightBitAddress(AddressError):
    """A non-ASCII envelope address in a transaction that did not declare SMTPUTF8."""


# RFC 5321 4.1.2 Mailbox, as MAIL and RCPT carry it (source routes already
# dropped by the SMTP parser): a dot-string or quoted-string local part, and a
# domain or an address literal. RFC 6531 (SMTPUTF8) adds non-ASCII characters
# to atext, qtext and domain labels; control characters (C0, DEL, C1) and
# undecodable bytes (surrogates) are never part of an address.
_U = "\u00a0-\ud7ff\ue000-\U0010ffff"
_MAILBOX = {
    utf8: re.compile(
        rf"(?:[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{u}-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{u}-]+)*"  # dot-string
        rf'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e{u}]|\\[\x20-\x7e])*")'  # quoted-string
        rf"@(?:[A-Za-z0-9{u}](?:[A-Za-z0-9{u}-]*[A-Za-z0-9{u}])?"  # domain
        rf"(?:\.[A-Za-z0-9{u}](?:[A-Za-z0-9{u}-]*[A-Za-z0-9{u}])?)*"
        r"|\[[\x21-\x5a\x5e-\x7e]+\])"  # address literal
    )
    for utf8, u in ((False, ""), (True, _U))
}


def check_envelope_address(text: str, smtputf8: bool) -> None:
    """Refuse what may not stand in MAIL FROM or RCPT TO (without the brackets).

    Raises EightBitAddress for a non-ASCII address without SMTPUTF8, and
    AddressError for anything else that is not an RFC 5321 (RFC 6531 with
    SMTPUTF8) mailbox: junk with spaces, a local part or domain holding
    control characters, CR or LF (quoted or not). The message never repeats
    the address: it may hold bytes that must not reach a log or a reply.
    """
    if not text.isascii() and not smtputf8:
        raise EightBitAddress("non-ASCII address without SMTPUTF8")
    if _MAILBOX[smtputf8 and not text.isascii()].fullmatch(text) is None:
        raise AddressError("not an RFC 5321 mailbox")


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
