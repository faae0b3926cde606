"""Who sent it: the sender signature checked against the claimed sender,
and the inbound policy per sending domain.

Pure deciding: no SMTP, no SQL. The caller supplies the signer's keys (from
the keystore), the admin's aliases and policy, and maps refusals to replies.

Rules (docs/OPERATIONS.md, "Sender authenticity"):
* a signature verifies only with a key imported for exactly its signer, and
  the signer's domain must be the inner From: domain and the envelope
  sender's, unless the admin lists "from-domain=signer-domain";
* a signature that is present but fails (a broken half, another payload, a
  revoked key, a signer that is not the sender) is refused under every
  policy: it is a forgery, not an old sender;
* a signer without any imported key is delivered as signature-invalid under
  `any` and `sealed`, refused under `signed`; unsigned mail likewise;
* clear mail claiming a sender whose policy is `sealed` or `signed` is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from . import bundle, mime, signing
from .addresses import AddressError, parse_address

SIGNED, SEALED, ANY = "signed", "sealed", "any"
# Refusal / log reasons.
UNSIGNED = "unsigned"
SIGNATURE_INVALID = "signature-invalid"
SIGNER_UNKNOWN = "signer-unknown"
SIGNER_MISMATCH = "signer-mismatch"
NOT_SEALED = "not-sealed"
FORGED = (SIGNATURE_INVALID, SIGNER_MISMATCH)  # refused whatever the policy


@dataclass(frozen=True)
class Verdict:
    status: str  # the trace header's words
    reason: str | None  # None: signed by the claimed sender; else why not


def from_address(message: bytes) -> str | None:
    """The canonical address of the (first) inner From:, or None."""
    head, _ = mime.split_head(message)
    try:
        fields = mime.fields(head)
    except mime.MimeError:
        return None
    values = [f.value.decode("utf-8", "replace").replace("\r", "").replace("\n", " ")
              for f in fields if f.name.lower() == "from"]
    for _, addr in getaddresses(values[:1]):
        try:
            return parse_address(addr).owner
        except AddressError:
            return None
    return None


def domain_of(address: str | None) -> str | None:
    return address.rpartition("@")[2] if address and "@" in address else None


def _allowed(signer_domain: str, domain: str | None, aliases: Sequence[tuple[str, str]]) -> bool:
    return domain is None or domain == signer_domain or (domain, signer_domain) in aliases


def assess(signature: bundle.Signature | None, keys: Sequence[signing.VerifyKey], sender: str | None,
           envelope_sender: str | None, aliases: Sequence[tuple[str, str]] = ()) -> Verdict:
    """Check a bundle's signature against the claimed sender (inner From:) and
    the envelope sender (both canonical addresses, None when absent)."""
    if signature is None:
        return Verdict("unsigned", UNSIGNED)
    outcome = signature.check(keys)
    if outcome == bundle.SIGNER_UNKNOWN:
        return Verdict("signature-invalid", SIGNER_UNKNOWN)
    if outcome != bundle.SIGNED:
        return Verdict("signature-invalid", SIGNATURE_INVALID)
    if sender is None or not all(_allowed(signature.domain, domain_of(a), aliases)
                                 for a in (sender, envelope_sender)):
        return Verdict("signature-invalid", SIGNER_MISMATCH)
    if "@" in signature.signer and signature.signer != sender and \
            (domain_of(sender), signature.domain) not in aliases:
        return Verdict("signature-invalid", SIGNER_MISMATCH)  # alice's key does not sign for bob
    return Verdict(f"signed-by={signature.signer} ({signing.KIND_NAMES[signature.kind]})", None)


def refusal(policy: str | None, verdict: Verdict | None) -> str | None:
    """The reason to refuse, or None to deliver. verdict None: clear mail."""
    policy = policy or ANY
    if verdict is None:
        return NOT_SEALED if policy in (SIGNED, SEALED) else None
    if verdict.reason in FORGED:
        return verdict.reason
    if policy == SIGNED and verdict.reason is not None:
        return verdict.reason
    return None
