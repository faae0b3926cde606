"""The keyed integrity of one keystore database: checking it and keeping it up.

integrity.py says what is keyed and why; this module reads and writes the
SQLite tables. Every method runs inside the caller's transaction, so a check
sees one consistent state and an update lands together with the change it
describes.
"""

from __future__ import annotations

import json
import sqlite3

from . import audit, head, integrity
from .errors import Tampered
from .integrity import KEY_COLUMN, TABLES, Keyed, Record

AUDIT_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)


def audit_entries(db: sqlite3.Connection, since: int = 0) -> list[audit.AuditEntry]:
    rows = db.execute("SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM audit "
                      "WHERE seq >= ? ORDER BY seq", (since,)).fetchall()
    out = []
    for seq, at, actor, action, subject, detail, prev, digest in rows:
        try:
            parsed = json.loads(detail)
        except (TypeError, ValueError):
            parsed = {"unparseable": str(detail)}
        if not isinstance(parsed, dict):
            parsed = {"unparseable": str(detail)}
        out.append(audit.AuditEntry(seq, at, actor, action, subject, parsed, prev, digest))
    return out


def has_record(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM meta WHERE name = 'integrity'").fetchone() is not None


class Ledger:
    def __init__(self, db: sqlite3.Connection, keyed: Keyed) -> None:
        self.db, self.keyed = db, keyed

    # --- checks -----------------------------------------------------------------

    def record(self) -> Record:
        row = self.db.execute("SELECT value FROM meta WHERE name = 'integrity'").fetchone()
        return Record.load(row[0] if row else None, self.keyed)

    def check_tail(self, record: Record) -> None:
        """The audit log's last entry is the record's head: what every change relies on."""
        top = self.db.execute("SELECT max(seq) FROM audit").fetchone()[0]
        entries = audit_entries(self.db, top) if top is not None else []
        last = entries[0] if entries else None
        if last is not None and self.keyed.entry(last.prev_hash, last.body()) != last.hash:
            raise Tampered(f"audit log entry {last.seq} was altered")
        integrity.check_audit_tail(record, last.seq if last else 0, last.hash if last else None)

    def check(self, *, full: bool) -> Record:
        """Everything mail depends on: the record, the audit log's end, every key and
        policy row and both tallies; full: every audit entry too. Raises Tampered."""
        record = self.record()
        if full:
            broken = audit.first_broken(audit_entries(self.db), self.keyed.entry)
            if broken:
                raise Tampered(f"audit log entry {broken[0]} {broken[1]}")
        self.check_tail(record)
        for table in TABLES:
            cursor = self.db.execute(f"SELECT * FROM {table} ORDER BY {KEY_COLUMN[table]}")
            names = tuple(d[0] for d in cursor.description)
            integrity.check_rows(self.keyed, record, table, names, cursor.fetchall())
        return record

    def check_head(self, witness: head.Head | None, file: object) -> None:
        """The keystore reaches the head its head file recorded (not rolled back)."""
        if witness is None:
            return
        row = self.db.execute("SELECT hash FROM audit WHERE seq = ?", (witness.seq,)).fetchone()
        if row is None:
            raise Tampered(f"it is older than its head file {file} (audit entry {witness.seq} is missing): "
                           "put back from an earlier copy?")
        if row[0] != witness.hash:
            raise Tampered(f"its audit entry {witness.seq} is not the one its head file {file} records: "
                           "replaced by another copy?")

    # --- upkeep -----------------------------------------------------------------

    def _row(self, table: str, key: object) -> tuple[tuple[str, ...], tuple] | None:
        cursor = self.db.execute(f"SELECT * FROM {table} WHERE {KEY_COLUMN[table]} = ?", (key,))
        values = cursor.fetchone()
        return (tuple(d[0] for d in cursor.description), values) if values else None

    def take(self, record: Record, table: str, key: object) -> None:
        """Before a row is changed or deleted: check it, and take its share out of the tally."""
        found = self._row(table, key)
        if found is None:
            return
        names, values = found
        mac, share = self.keyed.row(table, names, values)
        if values[names.index("mac")] != mac:
            raise Tampered(f"{integrity.describe_row(table, dict(zip(names, values)))} was added or changed")
        record.tallies[table].remove(share)

    def put(self, record: Record, table: str, key: object) -> None:
        """After a row is written: store its mac, and add its share to the tally."""
        found = self._row(table, key)
        if found is None:
            return
        names, values = found
        mac, share = self.keyed.row(table, names, values)
        self.db.execute(f"UPDATE {table} SET mac = ? WHERE {KEY_COLUMN[table]} = ?", (mac, key))
        record.tallies[table].add(share)

    def save(self, record: Record) -> head.Head:
        self.db.execute("INSERT INTO meta VALUES ('integrity', ?) ON CONFLICT (name) DO UPDATE "
                        "SET value = excluded.value", (record.dump(self.keyed),))
        last = self.db.execute("SELECT max(seq) FROM audit").fetchone()[0]
        return head.Head(last or 0, record.audit_head)

    def reseal(self, rekey_from: int | None) -> head.Head:
        """Key everything as it is now: the audit chain from entry rekey_from on
        (None: the chain is already keyed), every row's mac, a new record."""
        if rekey_from is not None:
            self._rekey(rekey_from)
        record = Record()
        for table in TABLES:
            keys = [r[0] for r in self.db.execute(f"SELECT {KEY_COLUMN[table]} FROM {table}")]
            for key in keys:
                self.put(record, table, key)
        entries = audit_entries(self.db)
        record.audit_seq = entries[-1].seq if entries else 0
        record.audit_head = entries[-1].hash if entries else ""
        return self.save(record)

    def _rekey(self, since: int) -> None:
        entries = audit_entries(self.db)
        # The triggers keep the log append-only against mistakes; the keyed
        # chain is what protects it. They come back (if someone dropped them) below.
        self.db.execute("DROP TRIGGER IF EXISTS audit_no_update")
        prev = audit.GENESIS
        for entry in entries:
            if entry.seq >= since:
                digest = self.keyed.entry(prev, entry.body())
                self.db.execute("UPDATE audit SET prev_hash = ?, hash = ?, detail = ? WHERE seq = ?",
                                (prev, digest, json.dumps(entry.detail, sort_keys=True), entry.seq))
                prev = digest
            else:
                prev = entry.hash
        for statement in AUDIT_TRIGGERS:
            self.db.execute(statement)
