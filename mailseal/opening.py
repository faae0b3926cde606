"""Who may have the plaintext of a bundle: opening it per envelope recipient.

A bundle reaches the inbound gateway with one or more envelope recipients.
The plaintext goes only to a recipient that (1) one of its own identities
opens and (2) the sender bound into the authenticated header (version 2).
Everyone else in the transaction is refused, so a captured bundle re-sent
with an extra RCPT gets that recipient nothing.

Pure: no SMTP, no SQL. The caller looks up each recipient's identities and
maps the refusal reasons to replies. The work here (one unwrap per distinct
identity, one decryption) grows with the number of stanzas and identities,
which an attacker chooses: the caller runs it off the event loop when large.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import age, bundle

# Refusal reasons for one recipient (the log and reply names).
NO_LOCAL_KEY = "no-local-key"  # the keystore holds no identity for this recipient
NO_MATCHING_KEY = "no-matching-key"  # its identities open no stanza
NOT_BOUND = "not-bound"  # genuine, but not sealed for this recipient
UNBOUND_VERSION = "version-1-refused"  # a version 1 bundle while open_version1 is off


@dataclass(frozen=True)
class Candidate:
    """One envelope recipient: its canonical address and its identities."""

    address: str | None  # canonical form; None when the address is unusable
    identities: Sequence[age.Identity] = field(repr=False, default=())


@dataclass(frozen=True)
class Opening:
    opened: bundle.Opened | None  # None when nobody in the transaction may have it
    refused: dict[str, str]  # envelope recipient -> reason


def trials(blob: bundle.KeyBlob, candidates: Mapping[str, Candidate]) -> int:
    """How many stanza unwraps opening may take: the cost to plan for."""
    distinct = {id(i) for c in candidates.values() for i in c.identities}
    return blob.recipient_stanzas * len(distinct)


def open_for(parts, blob: bundle.KeyBlob, candidates: Mapping[str, Candidate], *,
             open_version1: bool = True) -> Opening:
    """Open `parts` for the envelope recipients in `candidates`.

    Raises bundle.MalformedBundle and age.AuthenticationError (tampered,
    including a header MAC that fails for any identity) for the whole
    message; per-recipient refusals are returned.
    """
    file_key = None
    opens: dict[int, bool] = {}
    for candidate in candidates.values():
        for identity in candidate.identities:
            if id(identity) in opens:
                continue
            try:
                key, _ = blob.unwrap([identity])
            except age.NoIdentityMatch:
                opens[id(identity)] = False
                continue
            opens[id(identity)] = True
            file_key = key  # one file key per bundle: every opening stanza gives the same
    refused: dict[str, str] = {}
    for rcpt, candidate in candidates.items():
        if not candidate.identities:
            refused[rcpt] = NO_LOCAL_KEY
        elif not any(opens[id(i)] for i in candidate.identities):
            refused[rcpt] = NO_MATCHING_KEY
    if file_key is None:
        return Opening(None, refused)
    _, _, binding = blob.authenticate(file_key)
    for rcpt, candidate in candidates.items():
        if rcpt in refused:
            continue
        if binding is None:
            if not open_version1:
                refused[rcpt] = UNBOUND_VERSION
        elif candidate.address is None or not binding.covers(candidate.address):
            refused[rcpt] = NOT_BOUND
    entitled = [c for rcpt, c in candidates.items() if rcpt not in refused]
    if not entitled:
        return Opening(None, refused)
    opener = next(i for c in entitled for i in c.identities if opens[id(i)])
    return Opening(bundle.decrypt_parts(parts, blob, file_key, opener), refused)
