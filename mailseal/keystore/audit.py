"""The audit log's hash chain: each entry commits to the one before it.

Editing, inserting or deleting a row in the middle breaks the chain and
`mailseal keys audit --verify` names the first bad entry. Cutting entries
off the end cannot be seen from inside the file: record the head hash that
`--verify` prints somewhere else to detect that too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

GENESIS = "0" * 64


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


def entry_hash(prev_hash: str, seq: int, at: int, actor: str, action: str, subject: str, detail: dict) -> str:
    body = json.dumps([seq, at, actor, action, subject, detail], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def first_broken(entries: list[AuditEntry]) -> tuple[int, str] | None:
    """(seq, what is wrong) of the first entry that breaks the chain, or None."""
    prev = GENESIS
    expected_seq = None
    for entry in entries:
        if expected_seq is not None and entry.seq != expected_seq:
            return entry.seq, f"entries missing before {entry.seq}"
        if entry.prev_hash != prev:
            return entry.seq, "does not follow the entry before it"
        if entry_hash(prev, entry.seq, entry.at, entry.actor, entry.action, entry.subject,
                      entry.detail) != entry.hash:
            return entry.seq, "was altered"
        prev = entry.hash
        expected_seq = entry.seq + 1
    return None
