"""Plain records the keystore hands out, and the public key card."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from .. import age, signing
from .errors import KeystoreError
from .fingerprint import fingerprint

LOCAL, REMOTE = "local", "remote"


ENCRYPTION_KINDS = ("mlkem768x25519", "X25519")
SIGNING_KINDS = signing.KINDS
# Certificates of partners without mailseal, and our own S/MIME / OpenPGP keys.
PARTNER_KINDS = ("x509", "openpgp")
PublicKey = age.Recipient | signing.VerifyKey


def kind_of(key: PublicKey) -> str:
    if isinstance(key, signing.VerifyKey):
        return key.kind
    return "mlkem768x25519" if key.post_quantum else "X25519"


def family(kind: str) -> str:
    """'signing', 'encryption' (age) or 'partner' (S/MIME, OpenPGP): rotation
    and lookups keep them apart."""
    if kind in PARTNER_KINDS:
        return "partner"
    return "signing" if kind in SIGNING_KINDS else "encryption"


@dataclass(frozen=True)
class KeyRecord:
    id: int
    scope: str  # "local": our identity (private key held, opens mail); "remote": a recipient to seal to
    owner: str  # address or @domain, stored form
    kind: str  # "mlkem768x25519" or "X25519"; "ed25519+mldsa65" or "ed25519" for signing keys;
    # "x509" or "openpgp" for S/MIME and OpenPGP certificates
    recipient: str  # the public key string (a verifying key, a PEM or armored certificate)
    fingerprint: str
    label: str
    source: str
    created: int
    expires: int | None
    retired: int | None  # local keys replaced by `rotate`: still open mail
    revoked: int | None
    reason: str | None

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        if self.retired is not None:
            return "retired"
        return "active"

    def as_dict(self, now: float | None = None) -> dict:
        return {**asdict(self), "status": self.status(now)}


def _iso(ts: int | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _from_iso(text: str) -> int | None:
    if text == "never":
        return None
    import calendar

    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise KeystoreError(f"key card: bad time {text!r}") from None


CARD_HEADER = "# mailseal public key card"
CARD_FIELDS = ("address", "type", "fingerprint", "created", "expires", "key")
# Mail clients break long lines: a card's key is wrapped (continuation
# lines start with a space), and no line is longer than CARD_WIDTH.
CARD_WIDTH = 76
_KEY_LINE = 72
_QUOTE = re.compile(r"^(?:[ \t]*>)+ ?")


def render_card(record: KeyRecord) -> str:
    """What `keys export` prints and `keys import` reads: public data only."""
    key = record.recipient
    wrapped = "".join(f" {key[i : i + _KEY_LINE]}\n" for i in range(0, len(key), _KEY_LINE))
    return (
        f"{CARD_HEADER}\n"
        f"address: {record.owner}\n"
        f"type: {record.kind}\n"
        f"fingerprint: {record.fingerprint}\n"
        f"created: {_iso(record.created)}\n"
        f"expires: {_iso(record.expires)}\n"
        f"key:\n{wrapped}"
    )


@dataclass(frozen=True)
class Card:
    owner: str
    recipient: PublicKey  # an age recipient, or a signing (verifying) key
    created: int | None
    expires: int | None


def _card_fields(block: str) -> dict[str, str]:
    """Field values of one card; a line that starts no known field continues
    the one before (a wrapped key, or one a mail client re-wrapped)."""
    fields: dict[str, str] = {}
    current = None
    for raw in block.splitlines():
        line = _QUOTE.sub("", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in CARD_FIELDS and not name[:1].isspace():
            current = name.strip().lower()
            fields[current] = value.strip()
        elif current == "key":
            fields["key"] += line.strip()
        elif not sep:
            raise KeystoreError(f"key card: line without a colon: {line.strip()!r}")
    return fields


def _card_key(text: str) -> PublicKey:
    text = "".join(text.split())
    try:
        if signing.looks_like_verify_key(text):
            return signing.parse_verify_key(text)
        return age.parse_recipient(text)
    except (age.KeyFormatError, signing.SigningKeyError) as exc:
        raise KeystoreError(f"key card: {exc}") from None


def parse_cards(text: str) -> list[Card] | None:
    """Cards in text (several may be concatenated, wrapped or `> `-quoted);
    None if text holds no card."""
    if CARD_HEADER not in text:
        return None
    cards = []
    for block in text.split(CARD_HEADER)[1:]:
        fields = _card_fields(block)
        missing = {"address", "key", "fingerprint"} - set(fields)
        if missing:
            raise KeystoreError(f"key card lacks {', '.join(sorted(missing))}")
        key = _card_key(fields["key"])
        if fingerprint(str(key)) != fields["fingerprint"].upper():
            raise KeystoreError("key card: the fingerprint does not match the key (damaged or edited card)")
        cards.append(Card(fields["address"], key, _from_iso(fields.get("created", "never")),
                          _from_iso(fields.get("expires", "never"))))
    return cards
