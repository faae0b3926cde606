"""Key strings as age writes them, and age-keygen style identity files."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone

from . import bech32
from .errors import KeyFormatError
from .hybrid import HybridIdentity, HybridRecipient
from .x25519 import X25519Identity, X25519Recipient

Recipient = X25519Recipient | HybridRecipient
Identity = X25519Identity | HybridIdentity

_RECIPIENT_TYPES = {"age": X25519Recipient, "age1pq": HybridRecipient}
_IDENTITY_TYPES = {"age-secret-key-": X25519Identity, "age-secret-key-pq-": HybridIdentity}


def _decode(text: str, what: str) -> tuple[str, bytes]:
    try:
        return bech32.decode(text)
    except bech32.Bech32Error as exc:
        raise KeyFormatError(f"not a valid {what} ({exc})") from None


def parse_recipient(text: str) -> Recipient:
    """Parse `age1…` (X25519) or `age1pq1…` (mlkem768x25519)."""
    text = text.strip()
    if text.upper().startswith("AGE-SECRET-KEY-"):
        raise KeyFormatError("this is a private key (identity), not a recipient")
    if text.startswith(("ssh-", "ecdsa-")):
        raise KeyFormatError("SSH keys are not supported; use age1pq1… or age1…")
    if text.lower() != text:
        raise KeyFormatError("recipient strings are lowercase")
    hrp, data = _decode(text, "age recipient")
    kind = _RECIPIENT_TYPES.get(hrp)
    if kind is None:
        raise KeyFormatError(f"unknown recipient type {hrp!r}")
    try:
        return kind(data)
    except ValueError as exc:
        raise KeyFormatError(f"invalid recipient: {exc}") from None


def parse_identity(text: str) -> Identity:
    """Parse `AGE-SECRET-KEY-1…` or `AGE-SECRET-KEY-PQ-1…`."""
    text = text.strip()
    if text.lower().startswith("age1"):
        raise KeyFormatError("this is a public key (recipient), not an identity")
    if text.upper() != text:
        raise KeyFormatError("identity strings are uppercase")
    hrp, data = _decode(text, "age identity")
    kind = _IDENTITY_TYPES.get(hrp)
    if kind is None:
        raise KeyFormatError("unknown identity type")
    try:
        return kind(data)
    except ValueError as exc:
        raise KeyFormatError(f"invalid identity: {exc}") from None


def _lines(text: str):
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def _parse_file(text: str, parse, what: str) -> list:
    out = []
    for number, line in _lines(text):
        try:
            out.append(parse(line))
        except KeyFormatError as exc:
            raise KeyFormatError(f"line {number}: {exc}") from None
    if not out:
        raise KeyFormatError(f"no {what} found")
    return out


def parse_identities(text: str) -> list[Identity]:
    """Parse an identity file: one key per line, `#` comments, blank lines."""
    return _parse_file(text, parse_identity, "identity")


def parse_recipients(text: str) -> list[Recipient]:
    """Parse a recipients file: one key per line, `#` comments, blank lines."""
    return _parse_file(text, parse_recipient, "recipient")


def generate(classic: bool = False, rng: Callable[[int], bytes] = os.urandom) -> Identity:
    """A new identity: post-quantum hybrid unless classic is asked for."""
    return X25519Identity.generate(rng) if classic else HybridIdentity.generate(rng)


def identity_file(identity: Identity, now: datetime | None = None) -> str:
    """The text age-keygen writes: created and public-key comments, then the key."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    return (
        f"# created: {now.isoformat().replace('+00:00', 'Z')}\n"
        f"# public key: {identity.recipient()}\n"
        f"{identity}\n"
    )
