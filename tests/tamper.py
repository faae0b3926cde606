"""The keystore's attacker: Python's sqlite3 on the real file, without the master key.

Each attack is what someone who can write the keystore file but not read
the master key would do, knowing mailseal's source: drop the append-only
triggers, recompute the old unkeyed SHA-256 chain, copy a MAC from another
row. `victim` builds the keystore they attack, through the keystore API.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from mailseal import age
from mailseal.keystore import SQLiteKeyStore, fingerprint

EVE = age.generate(classic=True)  # the attacker's own key: mail must never be sealed to it
EVE_KEY = str(EVE.recipient())
EVE_FINGERPRINT = fingerprint(EVE_KEY)


def victim(store: SQLiteKeyStore) -> dict:
    """bob@b.test has a key (row 1); carol@b.test's key (row 2) is revoked; eve@evil.test
    is a partner whose key (row 3) was imported honestly; @b.test requires sealing;
    mail claiming @bank.test must be signed.
    Audit: 1 create, 2-4 imports, 5 revoke, 6 policy, 7 inbound policy."""
    bob = age.generate()
    store.import_recipient("bob@b.test", bob.recipient())
    carol = store.import_recipient("carol@b.test", age.generate().recipient())
    store.import_recipient("eve@evil.test", EVE.recipient())
    cursor = connect(store.path).execute("SELECT * FROM keys WHERE id = ?", (carol.id,))
    carol_row = dict(zip((d[0] for d in cursor.description), cursor.fetchone()))
    store.revoke(carol.fingerprint, "compromised")
    store.set_policy("@b.test", "require")
    store.set_inbound_policy("@bank.test", "signed")
    return {"bob": bob, "carol_row_before_revocation": carol_row}


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def edit_old_entry_and_rechain(path: Path, victim: dict) -> None:
    """Hide who got key 1: rewrite audit entry 2, then the unkeyed chain from there on."""
    db = connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    prev = db.execute("SELECT hash FROM audit WHERE seq = 1").fetchone()[0]
    for seq, at, actor, action, subject, detail in db.execute(
            "SELECT seq, at, actor, action, subject, detail FROM audit WHERE seq >= 2 ORDER BY seq").fetchall():
        if seq == 2:
            subject = "someone@b.test"
        body = json.dumps([seq, at, actor, action, subject, json.loads(detail)], sort_keys=True,
                          separators=(",", ":"), ensure_ascii=True)
        digest = hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()
        db.execute("UPDATE audit SET subject = ?, prev_hash = ?, hash = ? WHERE seq = ?", (subject, prev, digest, seq))
        prev = digest
    db.close()


def delete_tail_entry(path: Path, victim: dict) -> None:
    """Remove the record of the last change (the policy)."""
    db = connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    db.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    db.close()


def flip_policy_to_plain(path: Path, victim: dict) -> None:
    connect(path).execute("UPDATE policies SET policy = 'plain' WHERE owner = '@b.test'").connection.close()


def accept_unsigned_bank_mail(path: Path, victim: dict) -> None:
    connect(path).execute("UPDATE inbound_policies SET policy = 'any' WHERE owner = '@bank.test'").connection.close()


def insert_extra_key(path: Path, victim: dict) -> None:
    """A second key for bob: the attacker's, with a MAC copied from a genuine row."""
    db = connect(path)
    db.execute("INSERT INTO keys (scope, owner, kind, recipient, fingerprint, label, source, created, mac) "
               "SELECT 'remote', 'bob@b.test', 'X25519', ?, ?, '', 'imported', created, mac FROM keys WHERE id = 1",
               (EVE_KEY, EVE_FINGERPRINT))
    db.close()


def change_owner(path: Path, victim: dict) -> None:
    """The partner key of eve@evil.test becomes bob's."""
    connect(path).execute("UPDATE keys SET owner = 'bob@b.test' WHERE id = 3").connection.close()


def delete_key_row(path: Path, victim: dict) -> None:
    connect(path).execute("DELETE FROM keys WHERE id = 1").connection.close()


def revive_revoked_key(path: Path, victim: dict) -> None:
    """Carol's revoked key put back exactly as it was before its revocation, MAC and all."""
    row = victim["carol_row_before_revocation"]
    connect(path).execute("UPDATE keys SET revoked = ?, reason = ?, mac = ? WHERE id = 2",
                          (row["revoked"], row["reason"], row["mac"])).connection.close()


def delete_integrity_record(path: Path, victim: dict) -> None:
    connect(path).execute("DELETE FROM meta WHERE name = 'integrity'").connection.close()


# (attack, what `keys audit --verify` names). The first five are issue 8's.
ATTACKS = [
    (edit_old_entry_and_rechain, "audit log entry 2 was altered"),
    (delete_tail_entry, "its audit log ends at entry 6 where its record says 7: entries were deleted"),
    (flip_policy_to_plain, "policy for @b.test was added or changed"),
    (insert_extra_key, f"key 4 of bob@b.test ({EVE_FINGERPRINT}) was added or changed"),
    (change_owner, f"key 3 of bob@b.test ({EVE_FINGERPRINT}) was added or changed"),
    (delete_key_row, "1 of its key rows were deleted"),
    (revive_revoked_key, "its key rows do not match its record (rows put back from an older copy)"),
    (accept_unsigned_bank_mail, "inbound policy for @bank.test was added or changed"),
    (delete_integrity_record, "its integrity record was deleted"),
]
BRIEF_ATTACKS = ATTACKS[:5]


def ids(attacks) -> list[str]:
    return [attack.__name__ for attack, _ in attacks]
