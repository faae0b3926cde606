"""The audit log's chain: each entry commits to the one before it, under a key.

An entry's hash is an HMAC (integrity.Keyed.entry, a key derived from the
master key) of the previous entry's hash and the entry itself: editing,
inserting or deleting an entry breaks the chain, and nobody without the
master key can compute a chain that verifies again. The keystore's
integrity record holds the count and the last hash, so entries cut off the
end are seen too.

Keystores written before the chain was keyed used plain SHA-256
(`legacy_hash`): such a chain is checked once more, then re-keyed, when a
mailseal with the master key first opens the keystore.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

GENESIS = "0" * 64

Hasher = Callable[[str, bytes], str]  # (previous hash, entry body) -> hash


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: int
    actor: str
    action: str
    subject: str
    detail: dict
    prev_hash: str
    hash: str

    def body(self) -> bytes:
        return body(self.seq, self.at, self.actor, self.action, self.subject, self.detail)


def body(seq: int, at: int, actor: str, action: str, subject: str, detail: dict) -> bytes:
    return json.dumps([seq, at, actor, action, subject, detail], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def legacy_hash(prev_hash: str, data: bytes) -> str:
    """The unkeyed chain of keystores made before the chain was keyed."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + data).hexdigest()


def first_broken(entries: list[AuditEntry], hasher: Hasher) -> tuple[int, str] | None:
    """(seq, what is wrong) of the first entry that breaks the chain, or None.

    A gap in the numbers is only a break where the chain does not link
    across it (an accepted deletion, re-keyed by `keys audit --accept`,
    leaves a gap that links).
    """
    prev, expected_seq = GENESIS, 1
    for entry in entries:
        if entry.prev_hash != prev:
            if entry.seq != expected_seq:
                return entry.seq, "follows deleted entries"
            return entry.seq, "does not follow the entry before it"
        if hasher(prev, entry.body()) != entry.hash:
            return entry.seq, "was altered"
        prev, expected_seq = entry.hash, entry.seq + 1
    return None
