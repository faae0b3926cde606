"""Who sent it: the sender signature checked against the claimed sender,
and the inbound policy per sending domain.

Pure deciding: no SMTP, no SQL. The caller supplies the signer's keys (from
the keystore), the admin's aliases and policy, and maps refusals to replies.

Rules (docs/OPERATIONS.md, "Sender authenticity"):
* the claimed sender is every mailbox of the one inner From: field, read
  from the whole header block (however many decrypted chunks it spans) with
  the RFC 5322 parser; a header block we cannot read exactly as every mail
  client would (no From:, two, a group, a defect, a line that is no field, a
  bare CR, a leading continuation line, over mime.HEAD_LIMIT) leaves the
  sender unclear, and an unclear sender is judged by the strictest inbound
  policy on file (delivered, marked `sender-unclear`, only when that is `any`);
* a signature verifies only with a key imported for exactly its signer, and
  the signer's domain must be the domain of every From: mailbox and of the
  envelope sender (a null sender excepted, an unparseable one refused),
  unless the admin lists "from-domain=signer-domain";
* a signature that is present but fails (a broken half, another payload, a
  revoked key, an Ed25519-only signature from a signer with a composite key
  on file, a signer that is not the sender) is refused under every policy:
  it is a forgery, not an old sender;
* a signer without any imported key is delivered as signature-invalid under
  `any` and `sealed`, refused under `signed`; unsigned mail likewise;
* clear mail claiming a sender whose policy is `sealed` or `signed` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import errors as email_errors
from email.policy import default as rfc5322
from functools import lru_cache

from . import bundle, headerfilter, mime, signing
from .addresses import AddressError, parse_address

SIGNED, SEALED, ANY = "signed", "sealed", "any"
STRICTNESS = (ANY, SEALED, SIGNED)
# Refusal / log reasons.
UNSIGNED = "unsigned"
SIGNATURE_INVALID = "signature-invalid"
KEY_REVOKED = "signer-key-revoked"
DOWNGRADE = "signature-downgrade"
SIGNER_UNKNOWN = "signer-unknown"
SIGNER_MISMATCH = "signer-mismatch"
NOT_SEALED = "not-sealed"
SENDER_UNCLEAR = "sender-unclear"
FORGED = (SIGNATURE_INVALID, KEY_REVOKED, DOWNGRADE, SIGNER_MISMATCH)  # refused whatever the policy
NULL_SENDERS = ("", "<>")
# Defects the RFC 5322 parser reports for mail that still names its
# mailboxes exactly: obsolete syntax (a route, "From :") and a UTF-8 local part.
_HARMLESS = (email_errors.ObsoleteHeaderDefect, email_errors.NonASCIILocalPartDefect)
# "ceo@a.test." is a.test: one trailing dot of a domain, before what ends an address.
_TRAILING_DOT = re.compile(r"(@[^\s<>()\[\],;:\"@\\]+)\.(?=[\s>,;()]|$)")


class UnclearSender(ValueError):
    """The inner From: does not name its mailboxes beyond doubt."""


@dataclass(frozen=True)
class Verdict:
    status: str  # the trace header's words
    reason: str | None  # None: signed by the claimed sender; else why not


def header_block(chunks: Sequence[bytes]) -> bytes:
    """The header block of a message in pieces, found across chunk
    boundaries; UnclearSender when it is longer than mime.HEAD_LIMIT."""
    if not chunks:
        return b""
    count = headerfilter.chunks_holding_head(chunks)
    if sum(map(len, chunks[:count - 1])) > mime.HEAD_LIMIT:
        raise UnclearSender("header block too long")  # without joining a huge one
    head, _ = mime.split_head(chunks[0] if count == 1 else b"".join(chunks[:count]))
    return head


def senders(chunks: Sequence[bytes]) -> tuple[str, ...]:
    """The canonical address of every mailbox of the inner From:, or
    UnclearSender saying why there is no such answer."""
    head = header_block(chunks)
    if head[:1] in (b" ", b"\t"):
        raise UnclearSender("header block starts with a continuation line")
    if re.search(rb"\r(?!\n)", head):
        raise UnclearSender("bare CR in the header block")  # a line break to some readers only
    try:
        fields = mime.fields(head, ("from",))
    except mime.MimeError:
        raise UnclearSender("header block too long or a line that is no field") from None
    if len(fields) != 1:
        raise UnclearSender("no From: field" if not fields else "more than one From: field")
    return _mailboxes(fields[0].value)


@lru_cache(maxsize=4096)  # the same From: comes again and again in a mail flow
def _mailboxes(value: bytes) -> tuple[str, ...]:
    # A display name in some 8-bit charset stays a display name; a byte that
    # is not UTF-8 in an address leaves the address unusable (unclear).
    text = value.decode("utf-8", "replace")
    text = re.sub(r"\r?\n(?=[ \t])", "", text)  # unfold
    try:
        header = rfc5322.header_factory("From", _TRAILING_DOT.sub(r"\1", text))
    except Exception:  # noqa: BLE001 - the parser's failures have no common type
        raise UnclearSender("From: cannot be parsed") from None
    if any(not isinstance(d, _HARMLESS) for d in header.defects):
        raise UnclearSender("From: has syntax errors")
    if any(group.display_name is not None for group in header.groups):
        raise UnclearSender("From: holds a group")  # RFC 5322: a mailbox-list
    if not header.addresses:
        raise UnclearSender("From: names no mailbox")
    out = []
    for mailbox in header.addresses:
        if not mailbox.username or not mailbox.domain:
            raise UnclearSender("From: names an incomplete address")
        try:
            out.append(parse_address(mailbox.addr_spec).owner)
        except AddressError:
            raise UnclearSender("From: names an address that is not usable") from None
    return tuple(dict.fromkeys(out))


def domain_of(address: str | None) -> str | None:
    return address.rpartition("@")[2] if address and "@" in address else None


def _allowed(signer_domain: str, domain: str | None, aliases: Sequence[tuple[str, str]]) -> bool:
    return domain == signer_domain or (domain, signer_domain) in aliases


def _envelope_matches(signer_domain: str, envelope_sender: str | None, aliases) -> bool:
    """A null sender (bounces) names nobody to match; any other must parse."""
    if envelope_sender is None or envelope_sender in NULL_SENDERS:
        return True
    try:
        domain = parse_address(envelope_sender).domain
    except AddressError:
        return False
    return _allowed(signer_domain, domain, aliases)


def _check(signature: bundle.Signature, keys: signing.SignerKeys) -> str | None:
    """None when a usable key verifies the signature, else the reason."""
    if signature.kind != signing.HYBRID and signing.HYBRID in keys.kinds:
        return DOWNGRADE
    outcome = signature.check(keys.usable)
    if outcome == bundle.SIGNED:
        return None
    if keys.revoked and signature.check(keys.revoked) == bundle.SIGNED:
        return KEY_REVOKED
    return SIGNER_UNKNOWN if outcome == bundle.SIGNER_UNKNOWN else SIGNATURE_INVALID


def assess(signature: bundle.Signature | None, keys: signing.SignerKeys, sender: Sequence[str] | None,
           envelope_sender: str | None, aliases: Sequence[tuple[str, str]] = ()) -> Verdict:
    """Check a bundle's signature against the claimed sender (every From:
    mailbox, canonical; None when unclear) and the envelope sender (as in
    MAIL FROM; None when not known)."""
    if signature is None:
        return Verdict("unsigned", UNSIGNED)
    reason = _check(signature, keys)
    if reason is not None:
        return Verdict("signature-invalid", reason)
    if not sender or not _envelope_matches(signature.domain, envelope_sender, aliases) or \
            not all(_allowed(signature.domain, domain_of(a), aliases) for a in sender):
        return Verdict("signature-invalid", SIGNER_MISMATCH)
    if "@" in signature.signer and any(a != signature.signer and (domain_of(a), signature.domain) not in aliases
                                       for a in sender):
        return Verdict("signature-invalid", SIGNER_MISMATCH)  # alice's key does not sign for bob
    return Verdict(f"signed-by={signature.signer} ({signing.KIND_NAMES[signature.kind]})", None)


def strictest(policies: Iterable[str]) -> str:
    """The policy that judges a sender we cannot name: the strictest on file."""
    return max(policies, key=STRICTNESS.index, default=ANY)


def refusal(policy: str | None, verdict: Verdict | None, *, unclear: bool = False) -> str | None:
    """The reason to refuse, or None to deliver. verdict None: clear mail.
    unclear: the sender could not be named, and policy is the strictest."""
    policy = policy or ANY
    if verdict is not None and verdict.reason in FORGED:
        return verdict.reason
    if unclear and policy != ANY:
        return SENDER_UNCLEAR
    if verdict is None:
        return NOT_SEALED if policy in (SIGNED, SEALED) else None
    if policy == SIGNED and verdict.reason is not None:
        return verdict.reason
    return None
