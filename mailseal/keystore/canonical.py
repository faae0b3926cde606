"""Schema migration: every stored owner in canonical form (mailseal.addresses).

Keystores written before owners were canonical kept the local part's case
(`CEO@b.test`), so a lookup for `ceo@b.test` found neither its keys nor its
`require` policy. This step rewrites each owner to its canonical form, in the
migration's one transaction. Owners that collapse into one are merged:

* keys: every key is kept, under the canonical owner. The same key stored
  under two spellings becomes one row with the stricter state of the two:
  revoked if either was (the earliest revocation and its reason), retired if
  either was, the earlier expiry;
* policies: the strictest wins (require, then opportunistic, then plain);
* every rewritten or merged row gets an audit entry (`key.canonicalise`,
  `key.merge`, `policy.canonicalise`) naming the old spelling.

A local identity's sealed secret is bound to its owner, so one whose owner
changes is re-sealed under the new owner (`reseal`): that needs the master
key, and the migration fails as a whole without it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..addresses import AddressError, parse_owner
from .fingerprint import fingerprint

STRICTNESS = {"plain": 0, "opportunistic": 1, "require": 2}

Reseal = Callable[[str, str, str, bytes], bytes]  # (old owner, new owner, recipient, secret) -> secret
Audit = Callable[[str, str, dict], None]  # (action, subject, detail)


def _canonical(owner: str) -> str:
    try:
        return parse_owner(owner)
    except AddressError:
        return owner  # never stored by mailseal; left as it is (no lookup can reach it)


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def canonicalise_owners(db: sqlite3.Connection, reseal: Reseal, audit: Audit) -> None:
    _keys(db, reseal, audit)
    _policies(db, audit)


def _keys(db: sqlite3.Connection, reseal: Reseal, audit: Audit) -> None:
    rows = db.execute("SELECT id, scope, owner, recipient, secret, expires, retired, revoked, reason "
                      "FROM keys ORDER BY id").fetchall()
    for key_id, scope, owner, recipient, secret, expires, retired, revoked, reason in rows:
        canonical = _canonical(owner)
        if canonical == owner:
            continue
        twin = db.execute("SELECT id, expires, retired, revoked, reason FROM keys "
                          "WHERE scope = ? AND owner = ? AND recipient = ?", (scope, canonical, recipient)).fetchone()
        detail = {"from": owner, "fingerprint": fingerprint(recipient), "scope": scope}
        if twin is None:
            new_secret = reseal(owner, canonical, recipient, secret) if secret is not None else None
            db.execute("UPDATE keys SET owner = ?, secret = ? WHERE id = ?", (canonical, new_secret, key_id))
            audit("key.canonicalise", canonical, detail)
            continue
        twin_id, twin_expires, twin_retired, twin_revoked, twin_reason = twin
        first_revoked = _earliest(revoked, twin_revoked)
        merged_reason = twin_reason if first_revoked == twin_revoked else reason
        db.execute("UPDATE keys SET expires = ?, retired = ?, revoked = ?, reason = ? WHERE id = ?",
                   (_earliest(expires, twin_expires), _earliest(retired, twin_retired), first_revoked,
                    merged_reason, twin_id))
        db.execute("DELETE FROM keys WHERE id = ?", (key_id,))
        audit("key.merge", canonical, {**detail, "kept_row": twin_id, "revoked": first_revoked})


def _policies(db: sqlite3.Connection, audit: Audit) -> None:
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for owner, policy, updated in db.execute("SELECT owner, policy, updated FROM policies ORDER BY owner"):
        groups.setdefault(_canonical(owner), []).append((owner, policy, updated))
    for canonical, members in groups.items():
        if [m[0] for m in members] == [canonical]:
            continue
        _, policy, updated = max(members, key=lambda m: (STRICTNESS.get(m[1], 0), m[2]))
        db.executemany("DELETE FROM policies WHERE owner = ?", [(m[0],) for m in members])
        db.execute("INSERT INTO policies VALUES (?, ?, ?)", (canonical, policy, updated))
        audit("policy.canonicalise", canonical, {"from": {m[0]: m[1] for m in members}, "policy": policy})
