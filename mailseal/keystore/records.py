"""Plain records the keystore hands out, and the public key card."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .. import age
from .errors import KeystoreError
from .fingerprint import fingerprint

LOCAL, REMOTE = "local", "remote"


def kind_of(recipient: age.Recipient) -> str:
    return "mlkem768x25519" if recipient.post_quantum else "X25519"


@dataclass(frozen=True)
class KeyRecord:
    id: int
    scope: str  # "local": our identity (private key held, opens mail); "remote": a recipient to seal to
    owner: str  # address or @domain, stored form
    kind: str  # "mlkem768x25519" or "X25519"
    recipient: str  # the public key string
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


def render_card(record: KeyRecord) -> str:
    """What `keys export` prints and `keys import` reads: public data only."""
    return (
        f"{CARD_HEADER}\n"
        f"address: {record.owner}\n"
        f"type: {record.kind}\n"
        f"fingerprint: {record.fingerprint}\n"
        f"created: {_iso(record.created)}\n"
        f"expires: {_iso(record.expires)}\n"
        f"key: {record.recipient}\n"
    )


@dataclass(frozen=True)
class Card:
    owner: str
    recipient: age.Recipient
    created: int | None
    expires: int | None


def parse_cards(text: str) -> list[Card] | None:
    """Cards in text (several may be concatenated); None if text holds no card."""
    if CARD_HEADER not in text:
        return None
    cards = []
    for block in text.split(CARD_HEADER)[1:]:
        fields = {}
        for line in block.strip().splitlines():
            if line.strip() and not line.startswith("#"):
                name, sep, value = line.partition(":")
                if not sep:
                    raise KeystoreError(f"key card: line without a colon: {line.strip()!r}")
                fields[name.strip().lower()] = value.strip()
        missing = {"address", "key", "fingerprint"} - set(fields)
        if missing:
            raise KeystoreError(f"key card lacks {', '.join(sorted(missing))}")
        try:
            recipient = age.parse_recipient(fields["key"])
        except age.KeyFormatError as exc:
            raise KeystoreError(f"key card: {exc}") from None
        if fingerprint(str(recipient)) != fields["fingerprint"].upper():
            raise KeystoreError("key card: the fingerprint does not match the key (damaged or edited card)")
        cards.append(Card(fields["address"], recipient, _from_iso(fields.get("created", "never")),
                          _from_iso(fields.get("expires", "never"))))
    return cards
