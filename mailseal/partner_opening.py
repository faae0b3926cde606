"""Who may have the plaintext of S/MIME or PGP/MIME mail: opening it per envelope recipient.

A recipient whose own S/MIME or OpenPGP secret key (imported with `keys
import-secret`) opens the message gets the plaintext; a recipient with keys
of that format none of which opens it is refused (no-matching-key); a
recipient without any is left out (its mail is passed on as it came, to be
opened in its own mail client). These formats carry no recipient binding and
no replay serial: docs/OPERATIONS.md says what that means.

Pure: no SMTP, no SQL. The caller looks up each recipient's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import encrypted, mime, openpgp, policy, smime
from .partner_errors import NoKeyMatch

NO_MATCHING_KEY = "no-matching-key"
# What the trace header says of a signature.
UNSIGNED, SIGNED_BY, NOT_CHECKED = "unsigned", "signed-by", "signature-not-checked"
_SIGNED_TYPES = ("multipart/signed",)


def labelled_format(message: bytes) -> str | None:
    """policy.SMIME or policy.OPENPGP when the message says it is one (the
    opening decides whether it really is); None for everything else."""
    head, _ = mime.split_head(message)
    lowered = head.lower()
    if b"pkcs7-mime" not in lowered and b"pgp-encrypted" not in lowered:
        return None  # most mail, decided without parsing a header
    headers = mime.Headers(head)
    ctype = headers.content_type()
    if ctype in encrypted.SMIME_TYPES:
        # Signed-only S/MIME (signed-data, certs-only) is not encrypted: passed on as it is.
        kind = headers.param("smime-type").lower()
        return policy.SMIME if kind in ("", "enveloped-data", "authenveloped-data") else None
    if ctype == "multipart/encrypted" and headers.param("protocol").lower() == openpgp.PROTOCOL:
        return policy.OPENPGP
    return None


@dataclass(frozen=True)
class Opened:
    message: bytes = field(repr=False)
    key: str  # the key id the caller gave for the local key that opened it
    signature: str  # UNSIGNED, SIGNED_BY, NOT_CHECKED
    signers: tuple[str, ...] = ()  # OpenPGP fingerprints whose signatures verified


@dataclass(frozen=True)
class Opening:
    opened: Opened | None
    refused: dict[str, str]  # envelope recipient -> reason


def _inner_signed(message: bytes) -> bool:
    headers = mime.Headers(mime.split_head(message)[0])
    ctype = headers.content_type()
    return ctype in _SIGNED_TYPES or (ctype in encrypted.SMIME_TYPES and
                                      headers.param("smime-type").lower() == "signed-data")


def _open_one(message: bytes, form: str, key_id: str, key,
              signer_certificates: Callable[[list[str]], list] | None) -> Opened:
    if form == policy.SMIME:
        plaintext, signers = smime.open_message(message, [key]).message, ()
    else:
        done = openpgp.open_message(message, [key], signer_certificates)
        plaintext, signers = done.message, done.signers
    if signers:
        return Opened(plaintext, key_id, SIGNED_BY, signers)
    return Opened(plaintext, key_id, NOT_CHECKED if _inner_signed(plaintext) else UNSIGNED)


def open_for(message: bytes, form: str, candidates: Mapping[str, Sequence[tuple[str, object]]],
             signer_certificates: Callable[[list[str]], list] | None = None) -> Opening:
    """Open for the recipients in `candidates` ({rcpt: [(key id, key)]}, only
    recipients with keys of this format). Each distinct key is tried once.

    Raises partner_errors.MalformedMessage, Tampered or NotThisFormat for the
    whole message; per-recipient refusals are returned.
    """
    results: dict[str, Opened | None] = {}
    for keys in candidates.values():
        for key_id, key in keys:
            if key_id in results:
                continue
            try:
                results[key_id] = _open_one(message, form, key_id, key, signer_certificates)
            except NoKeyMatch:
                results[key_id] = None
    refused = {rcpt: NO_MATCHING_KEY for rcpt, keys in candidates.items()
               if not any(results[key_id] is not None for key_id, _ in keys)}
    opened = next((r for r in results.values() if r is not None), None)
    return Opening(opened, refused)
