"""The SQLite keystore: keys, policies and the audit log in one file.

WAL mode lets the daemon read while the CLI writes; every change is one
IMMEDIATE transaction together with its audit entry and the update of the
keystore's keyed integrity (integrity.py, ledger.py), so nothing is ever
half written. Lookups run one indexed query and read committed data, so a
key imported or revoked with the CLI is seen by a running daemon at its next
lookup, without a restart.

Before a lookup uses data another process committed (PRAGMA data_version
changed), the keys, the policies and the end of the audit log are checked
against the keyed integrity record, once per change, not per lookup; a
keystore changed without the master key is refused (Tampered) until it
verifies again. Every change through this class checks the record, the end
of the audit log and the rows it touches, so it never seals over someone
else's edit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import age, signing
from ..addresses import Address, AddressError, lookup_order, parse_owner
from . import audit, canonical, head, masterkey
from .errors import Conflict, KeystoreError, MasterKeyError, NotFound, StoreUnavailable, Tampered
from .fingerprint import fingerprint, looks_like_fingerprint, normalise
from .integrity import Keyed, Record
from .ledger import Ledger, audit_entries, has_record
from .records import LOCAL, PARTNER_KINDS, REMOTE, SIGNING_KINDS, KeyRecord, PublicKey, family, kind_of

log = logging.getLogger("mailseal.keystore")

POLICIES = ("require", "opportunistic", "plain")
INBOUND_POLICIES = ("signed", "sealed", "any")
_ENCRYPTION = "kind IN ('mlkem768x25519', 'X25519')"
_SIGNING = "kind IN ('ed25519+mldsa65', 'ed25519')"
_PARTNER = "kind IN ('x509', 'openpgp')"


def _canonical_owners(store: SQLiteKeyStore) -> None:
    canonical.canonicalise_owners(store._db, store._reseal, store._audit)


def _widen_kinds(kinds: str) -> str:
    """The keys table rebuilt with a wider kind CHECK (SQLite cannot alter one)."""
    return f"""
    CREATE TABLE keys_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL CHECK (scope IN ('local', 'remote')),
        owner TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ({kinds})),
        recipient TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        secret BLOB,
        label TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER,
        retired INTEGER,
        revoked INTEGER,
        reason TEXT,
        CHECK ((scope = 'local') = (secret IS NOT NULL)),
        UNIQUE (scope, owner, recipient)
    );
    INSERT INTO keys_new SELECT id, scope, owner, kind, recipient, fingerprint, secret, label, source, created,
        expires, retired, revoked, reason FROM keys;
    DROP TABLE keys;
    ALTER TABLE keys_new RENAME TO keys;
    CREATE INDEX keys_owner ON keys (owner, scope);
    CREATE INDEX keys_fingerprint ON keys (fingerprint);
    """


# Each entry moves the schema one version up; never edit a released one
# (migration 3 is written through _widen_kinds: the same statements as released).
# An entry is SQL, or a function of the store run inside the same transaction.
MIGRATIONS = [
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL CHECK (scope IN ('local', 'remote')),
        owner TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('mlkem768x25519', 'X25519')),
        recipient TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        secret BLOB,
        label TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER,
        retired INTEGER,
        revoked INTEGER,
        reason TEXT,
        CHECK ((scope = 'local') = (secret IS NOT NULL)),
        UNIQUE (scope, owner, recipient)
    );
    CREATE INDEX keys_owner ON keys (owner, scope);
    CREATE INDEX keys_fingerprint ON keys (fingerprint);
    CREATE TABLE policies (
        owner TEXT PRIMARY KEY,
        policy TEXT NOT NULL CHECK (policy IN ('require', 'opportunistic', 'plain')),
        updated INTEGER NOT NULL
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    _canonical_owners,  # 2: owners in canonical form (keystore/canonical.py)
    # 3: signing keys live beside encryption keys (a wider kind); inbound
    # policy per sending domain. SQLite cannot widen a CHECK in place.
    _widen_kinds("'mlkem768x25519', 'X25519', 'ed25519+mldsa65', 'ed25519'") + """
    CREATE TABLE inbound_policies (
        owner TEXT PRIMARY KEY,
        policy TEXT NOT NULL CHECK (policy IN ('signed', 'sealed', 'any')),
        updated INTEGER NOT NULL
    );
    """,
    # 4: certificates of partners without mailseal (S/MIME "x509", OpenPGP
    # "openpgp") and our own keys of those kinds, beside the age keys.
    _widen_kinds("'mlkem768x25519', 'X25519', 'ed25519+mldsa65', 'ed25519', 'x509', 'openpgp'"),
    # 5: a keyed MAC per row (integrity.py). Keying the rows and the audit
    # chain needs the master key: SQLiteKeyStore._upgrade does it. A later
    # rebuild of a table (as _widen_kinds does) must keep its `mac` column.
    """
    ALTER TABLE keys ADD COLUMN mac TEXT;
    ALTER TABLE policies ADD COLUMN mac TEXT;
    ALTER TABLE inbound_policies ADD COLUMN mac TEXT;
    """,
]

_COLUMNS = ("id, scope, owner, kind, recipient, fingerprint, label, source, created, expires, "
            "retired, revoked, reason")


def _identity_context(owner: str, recipient: str) -> bytes:
    # Binds a sealed private key to its row: moving it to another owner fails.
    return b"mailseal identity v1\x00" + owner.encode() + b"\x00" + recipient.encode()


def _owner(text: str) -> str:
    """An owner (address or @domain) in canonical form, whatever spelling the caller used."""
    try:
        return parse_owner(text)
    except AddressError as exc:
        raise KeystoreError(str(exc)) from None


def default_actor() -> str:
    user = os.environ.get("SUDO_USER")
    try:
        user = user or pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = user or str(os.geteuid())
    return user


@contextlib.contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreUnavailable(f"keystore {path} is locked by another process; try again") from None
        if "readonly" in text or "unable to open" in text:
            raise StoreUnavailable(f"keystore {path} cannot be written or opened: {text}") from None
        raise StoreUnavailable(f"keystore {path}: {text}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"keystore {path} is damaged or not a mailseal keystore ({exc})") from None


class SQLiteKeyStore:
    """See the package docstring for the lookup rules."""

    def __init__(
        self,
        path: Path,
        master: masterkey.Source,
        *,
        parent_domains: bool = False,
        create: bool = True,
        actor: str | None = None,
        clock: Callable[[], float] = time.time,
        head_file: Path | None = None,
        accept: bool = False,
    ) -> None:
        """head_file: see head.py (None: none). accept: an upgrade that finds the
        keystore changed without the master key records that and goes on
        (`keys audit --accept`), instead of refusing."""
        self.path = Path(path)
        self._source = master
        self._parent_domains = parent_domains
        self._actor = actor or default_actor()
        self._clock = clock
        self._head_file = head_file
        self._accept = accept
        self._master: masterkey.MasterKey | None = None
        self._master_problem: str | None = None  # what master(despite_tamper=True) let pass
        self._accepted: str | None = None  # what an upgrade with accept=True recorded
        self._keyed: Keyed | None = None
        self._record: Record | None = None  # the integrity record of the change in progress
        self._identity_cache: dict[tuple[int, str], age.Identity] = {}
        self._recipient_cache: dict[str, age.Recipient] = {}
        # Lookup results, valid while no connection committed anything
        # (PRAGMA data_version) and for at most a second (keys expire).
        self._lookups: dict[tuple, object] = {}
        self._lookups_time = 0.0
        # The data_version whose state was last checked, and what was wrong with it.
        self._verified_version: int | None = None
        self._broken: Tampered | None = None
        creating = not self.path.exists()
        if creating and not create:
            raise StoreUnavailable(f"keystore {self.path} does not exist (check [keystore] path; "
                                   "`mailseal keys init` creates one)")
        if creating:
            self._refuse_if_head_file()
            self._create_file()
        with _sqlite_errors(self.path):
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
            try:
                self._setup(creating)
            except BaseException:
                self._db.close()
                if creating:  # leave nothing half-made behind
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(self.path) + suffix).unlink(missing_ok=True)
                raise

    # --- set-up -------------------------------------------------------------

    def _refuse_if_head_file(self) -> None:
        if self._head_file is not None and self._read_head() is not None:
            raise StoreUnavailable(f"keystore {self.path} is missing, but its head file {self._head_file} "
                                   "records changes: restore the keystore from backup (delete the head file "
                                   "only to start again with an empty keystore)")

    def _create_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create keystore {self.path}: {exc.strerror}") from None
        try:
            if os.geteuid() == 0:
                # The admin CLI runs as root, the daemon as its own user (the
                # owner of the state directory): the keystore belongs to it.
                # SQLite gives its -wal and -shm files the same owner.
                parent = os.stat(self.path.parent)
                os.fchown(fd, parent.st_uid, parent.st_gid)
        finally:
            os.close(fd)

    def _setup(self, creating: bool) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 5000")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise StoreUnavailable(f"keystore {self.path}: cannot switch to WAL mode")
        db.execute("PRAGMA synchronous = FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreUnavailable(f"keystore {self.path} has schema version {version}, "
                                   f"newer than this mailseal knows ({len(MIGRATIONS)})")
        if version == 0 and not creating:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreUnavailable(f"{self.path} is an SQLite file but not a mailseal keystore")
        if creating:
            with self._write():
                self._migrate(0)
            self._initialise_master_key()
        elif version < len(MIGRATIONS) or not has_record(db):
            self._upgrade()

    def _migrate(self, version: int) -> None:
        for number in range(version, len(MIGRATIONS)):
            step = MIGRATIONS[number]
            if callable(step):
                step(self)
                continue
            for statement in _statements(step):
                self._db.execute(statement)
        self._db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def _initialise_master_key(self) -> None:
        salt = os.urandom(16) if self._source.passphrase_env else None
        key = masterkey.load(self._source, salt, creating=True)
        self._master = masterkey.MasterKey(key)
        with self._change(new=True):
            if salt is not None:
                self._db.execute("INSERT INTO meta VALUES ('argon2id_salt', ?)", (salt,))
                self._db.execute("INSERT INTO meta VALUES ('argon2id_params', ?)", (json.dumps(masterkey.ARGON2),))
            self._db.execute("INSERT INTO meta VALUES ('master_key_check', ?)", (self._master.check_value(),))
            self._db.execute("INSERT INTO meta VALUES ('created', ?)", (int(self._clock()),))
            self._audit("keystore.create", str(self.path), {"master_key": self._source.describe})

    def _upgrade(self) -> None:
        """A newer schema, and a keyed integrity for a keystore made before it
        existed: checked first (the old unkeyed chain at least), then keyed under
        the master key as it is, in one transaction, recorded in the audit log."""
        witness = None
        with self._named():
            ledger = self._ledger(despite_tamper=self._accept)
        with self._named(), self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            was_keyed = has_record(db)
            if version < len(MIGRATIONS) or not was_keyed:  # else another process did it meanwhile
                witness = self._upgrade_locked(ledger, version, was_keyed)
        if witness is not None:
            self._update_head_file(witness, required=False)

    def _upgrade_locked(self, ledger: Ledger, version: int, was_keyed: bool) -> head.Head:
        db = self._db
        was_keyed = was_keyed or self._master_problem is not None  # its record deleted
        if was_keyed:
            problem = self._master_problem or self._problem(ledger, full=True)
            broken = audit.first_broken(audit_entries(db), ledger.keyed.entry)
        else:
            broken = audit.first_broken(audit_entries(db), audit.legacy_hash)
            problem = f"audit log entry {broken[0]} {broken[1]} (before the chain was keyed)" if broken else None
        if problem and not self._accept:
            raise Tampered(problem)
        self._migrate(version)
        detail: dict = {"schema": [version, len(MIGRATIONS)]}
        if not was_keyed:
            detail["integrity"] = "keyed under the master key"
        if problem:
            detail["accepted"] = problem
        self._audit("keystore.upgrade", str(self.path), detail)
        self._accepted, self._master_problem = problem, None
        if not was_keyed:
            rekey_from: int | None = 1
        else:
            rekey_from = broken[0] if broken else None
        witness = ledger.reseal(rekey_from)
        self._set_check_value()
        return witness

    def _set_check_value(self) -> None:
        self._db.execute("INSERT INTO meta VALUES ('master_key_check', ?) ON CONFLICT (name) DO UPDATE "
                         "SET value = excluded.value", (self.master().check_value(),))

    def master(self, *, despite_tamper: bool = False) -> masterkey.MasterKey:
        """The master key, loaded and checked on first use.

        despite_tamper: the key is right, but the keystore says it was changed
        without it (its integrity record deleted): load it anyway, to accept.
        """
        if self._master is None:
            with _sqlite_errors(self.path):
                meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            if "master_key_check" not in meta:
                raise Tampered("its master key check value is missing; restore it from backup", self.path)
            master = masterkey.MasterKey(masterkey.load(self._source, meta.get("argon2id_salt"), creating=False))
            try:
                master.verify(meta["master_key_check"], self._source, keyed="integrity" in meta)
            except Tampered as exc:
                if not despite_tamper:
                    raise Tampered(exc.detail, self.path) from None
                self._master_problem = exc.detail
            self._master = master
        return self._master

    def _ledger(self, *, despite_tamper: bool = False) -> Ledger:
        if self._keyed is None:
            self._keyed = Keyed(self.master(despite_tamper=despite_tamper).integrity_key)
        return Ledger(self._db, self._keyed)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteKeyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with _sqlite_errors(self.path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._lookups.clear()  # data_version only counts other connections' commits

    def _reseal(self, old_owner: str, new_owner: str, recipient: str, secret: bytes) -> bytes:
        """A sealed identity moved to another owner (its sealed form binds the owner)."""
        try:
            master = self.master()
            plain = master.open(secret, _identity_context(old_owner, recipient))
        except MasterKeyError as exc:
            raise MasterKeyError(f"keystore {self.path}: moving the local key of {old_owner} to its canonical "
                                 f"owner {new_owner} needs the master key: {exc}") from None
        return master.seal(plain, _identity_context(new_owner, recipient))

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """A Tampered raised inside gets this keystore's path."""
        try:
            yield
        except Tampered as exc:
            if exc.path is not None:
                raise
            raise Tampered(exc.detail, self.path) from None

    @contextlib.contextmanager
    def _change(self, *, new: bool = False) -> Iterator[sqlite3.Connection]:
        """One change through the keystore: refused if the record, the end of the
        audit log or a row it changes do not verify, or if verify() found a
        problem that is still there; the record follows the change, in its
        transaction. (Other rows are not read: a change never makes an edit
        someone else made verify, so verify() still finds it.)"""
        ledger = self._ledger()
        if self._broken is not None and self._data_version() == self._verified_version:
            raise self._broken  # known to be changed without the master key: no change on top
        try:
            with self._named(), self._write() as db:
                self._record = Record() if new else ledger.record()
                if not new:
                    ledger.check_tail(self._record)
                yield db
                witness = ledger.save(self._record)
        finally:
            self._record = None
        self._update_head_file(witness, required=False)

    def _take(self, table: str, key: object) -> None:
        """Before a row is changed or deleted (ledger.take): it must verify."""
        if self._record is None:
            raise KeystoreError("internal error: a keystore row changed outside a change")
        self._ledger().take(self._record, table, key)

    def _put(self, table: str, key: object) -> None:
        if self._record is None:
            raise KeystoreError("internal error: a keystore row changed outside a change")
        self._ledger().put(self._record, table, key)

    def _audit(self, action: str, subject: str, detail: dict) -> None:
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, audit.GENESIS)
        at = int(self._clock())
        digest = self._ledger().keyed.entry(prev, audit.body(seq, at, self._actor, action, subject, detail))
        self._db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (seq, at, self._actor, action, subject, json.dumps(detail, sort_keys=True), prev, digest))
        if self._record is not None:
            self._record.appended(digest)

    # --- integrity ---------------------------------------------------------------

    def _read_head(self) -> head.Head | None:
        return head.read(self._head_file) if self._head_file is not None else None

    def _update_head_file(self, witness: head.Head, *, required: bool) -> None:
        if self._head_file is None:
            return
        try:
            head.write(self._head_file, witness)
        except KeystoreError as exc:
            if required:
                raise
            log.warning("%s; the keystore was changed all the same", exc)

    def _problem(self, ledger: Ledger, *, full: bool) -> str | None:
        """What is wrong (Tampered's detail), or None; inside the caller's transaction."""
        try:
            ledger.check(full=full)
            ledger.check_head(self._read_head(), self._head_file)
        except Tampered as exc:
            return exc.detail
        return None

    def _data_version(self) -> int:
        with _sqlite_errors(self.path):
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def verify(self, *, full: bool = True) -> Record:
        """Check the keystore against its keyed integrity and its head file.

        Raises Tampered naming the first problem; lookups then refuse too,
        until the data changes and verifies. full: every audit entry as well
        (what start-up and `keys audit --verify` do); otherwise the rows, the
        record and the end of the audit log (what each change seen costs).
        """
        version = self._data_version()
        ledger = self._ledger()
        try:
            with self._named(), _sqlite_errors(self.path):
                self._db.execute("BEGIN")  # one consistent state for every check
                try:
                    record = ledger.check(full=full)
                    ledger.check_head(self._read_head(), self._head_file)
                finally:
                    self._db.execute("COMMIT")
        except Tampered as exc:
            self._verified_version, self._broken = version, exc
            raise
        self._verified_version, self._broken = version, None
        return record

    def accept(self) -> str | None:
        """Accept the keystore as it is now, after an administrator reviewed what
        verify() reports: re-key it under the master key (the audit chain from
        its first broken entry), record that in the audit log, rewrite the head
        file. Returns what was wrong, or None if nothing was."""
        ledger = self._ledger(despite_tamper=True)
        with self._named(), self._write() as db:
            problem = self._master_problem or self._problem(ledger, full=True)
            if problem is None:
                return self._accepted
            broken = audit.first_broken(audit_entries(db), ledger.keyed.entry)
            self._audit("keystore.accept", str(self.path), {"problem": problem})
            self._set_check_value()
            # Before the commit: a daemon that sees the change then finds the head file
            # already following it (and if it cannot be written, nothing is accepted).
            self._update_head_file(ledger.reseal(broken[0] if broken else None), required=True)
        self._master_problem = None
        self._verified_version = None
        return problem

    def restored(self, detail: dict) -> None:
        """A keystore put back on purpose (`keys restore`): it must verify in itself;
        the audit log records the restore and the head file follows it."""
        ledger = self._ledger()
        try:
            with self._named(), self._write():
                self._record = ledger.check(full=True)
                self._audit("keystore.restore", str(self.path), detail)
                self._update_head_file(ledger.save(self._record), required=True)  # before the commit
        finally:
            self._record = None

    # --- lookups (the mail path) ----------------------------------------------

    def _owners(self, address: Address) -> list[str]:
        return lookup_order(address, self._parent_domains)

    def _checked(self) -> int:
        """The data_version whose state is verified (verify() once per change seen)."""
        version = self._data_version()
        if version != self._verified_version:
            self._lookups.clear()
            before = self._broken
            try:
                self.verify(full=False)
            except Tampered as exc:
                if before is None or str(before) != str(exc):  # one line per problem, not per lookup
                    log.error("%s; refusing to use it until it verifies again (mailseal keys audit --verify)", exc)
                raise
            if before is not None:
                log.warning("keystore %s verifies again; using it", self.path)
        elif self._broken is not None:
            raise self._broken
        return version

    def _cached(self, key: tuple, compute):
        while True:
            version = self._checked()
            now = self._clock()
            if now - self._lookups_time > 1.0 or len(self._lookups) > 100_000:
                self._lookups.clear()
                self._lookups_time = now
            try:
                return self._lookups[key]
            except KeyError:
                pass
            value = compute()
            if self._data_version() == version:
                self._lookups[key] = value
                return value
            # Another process committed while this was read: what was read
            # may not be what was verified. Verify, and read again.

    def _select_first_owner(self, sql: str, owners: list[str], *args) -> list[tuple]:
        marks = ",".join("?" * len(owners))
        with _sqlite_errors(self.path):
            rows = self._db.execute(sql.format(owners=marks), (*owners, *args)).fetchall()
        rank = {owner: i for i, owner in enumerate(owners)}
        best = min((rank[r[0]] for r in rows), default=None)
        return [r for r in rows if rank[r[0]] == best]

    def recipients_for(self, address: Address) -> list[age.Recipient]:
        """Public keys to seal to: the most specific owner with a usable key wins.

        Revoked and expired keys are never returned.
        """
        return list(self._cached(("recipients", address), lambda: self._recipients_for(address)))

    def _recipients_for(self, address: Address) -> tuple[age.Recipient, ...]:
        rows = self._select_first_owner(
            f"SELECT owner, recipient FROM keys WHERE scope = 'remote' AND {_ENCRYPTION} AND owner IN ({{owners}}) "
            "AND revoked IS NULL AND (expires IS NULL OR expires > ?) ORDER BY id",
            self._owners(address), int(self._clock()),
        )
        out = []
        for _, text in rows:
            recipient = self._recipient_cache.get(text)
            if recipient is None:
                recipient = self._recipient_cache[text] = age.parse_recipient(text)
            out.append(recipient)
        return tuple(out)

    def identities_for(self, address: Address) -> list[age.Identity]:
        """Every private key that may open mail for the address, most specific first.

        Rotated, expired and revoked identities are included (mail sealed to
        them may still be in flight); only `delete` removes one.
        """
        return list(self._cached(("identities", address), lambda: self._identities_for(address)))

    def _identities_for(self, address: Address) -> tuple[age.Identity, ...]:
        owners = self._owners(address)
        marks = ",".join("?" * len(owners))
        with _sqlite_errors(self.path):
            rows = self._db.execute(
                f"SELECT id, owner, recipient, secret FROM keys WHERE scope = 'local' AND {_ENCRYPTION} "
                f"AND owner IN ({marks}) ORDER BY id DESC", owners).fetchall()
        rank = {owner: i for i, owner in enumerate(owners)}
        rows.sort(key=lambda r: rank[r[1]])
        out = []
        for key_id, owner, recipient, secret in rows:
            identity = self._identity_cache.get((key_id, recipient))
            if identity is None:
                text = self.master().open(secret, _identity_context(owner, recipient))
                identity = age.parse_identity(text.decode())
                if str(identity.recipient()) != recipient:
                    raise MasterKeyError(f"stored identity {fingerprint(recipient)} does not match its public key")
                self._identity_cache[(key_id, recipient)] = identity
            out.append(identity)
        return tuple(out)

    def signing_key_for(self, address: Address) -> tuple[str, signing.SigningKey] | None:
        """(signer, key): the newest usable local signing key of the most
        specific owner (the address, else its domain); None when there is none.
        The signer is the owner as a signature names it (`a.test` for `@a.test`)."""
        return self._cached(("signing", address), lambda: self._signing_key_for(address))

    def _signing_key_for(self, address: Address) -> tuple[str, signing.SigningKey] | None:
        rows = self._select_first_owner(
            f"SELECT owner, id, recipient, secret FROM keys WHERE scope = 'local' AND {_SIGNING} "
            "AND owner IN ({owners}) AND revoked IS NULL AND retired IS NULL AND (expires IS NULL OR expires > ?) "
            "ORDER BY id DESC", self._owners(address), int(self._clock()))
        if not rows:
            return None
        owner, key_id, public, secret = rows[0]
        key = signing.parse_signing_key(self.master().open(secret, _identity_context(owner, public)).decode())
        if str(key.public()) != public:
            raise MasterKeyError(f"stored signing key {fingerprint(public)} does not match its public key")
        return owner.removeprefix("@"), key

    def verify_keys_for(self, signer: str) -> list[signing.VerifyKey]:
        """Keys that may verify a signature by `signer` (an address, or a domain
        without `@`): imported for exactly that owner, or our own; never a
        revoked or expired one. A retired own key still verifies (overlap)."""
        return list(self.signer_keys(signer).usable)

    def signer_keys(self, signer: str) -> signing.SignerKeys:
        """Every signing key on file for exactly `signer`: the usable ones (as
        verify_keys_for), the revoked ones, and the kinds of all of them."""
        return self._cached(("verify", signer), lambda: self._signer_keys(signer))

    def _signer_keys(self, signer: str) -> signing.SignerKeys:
        try:
            owner = _owner(signer if "@" in signer else "@" + signer)
        except KeystoreError:
            return signing.SignerKeys()
        with _sqlite_errors(self.path):
            rows = self._db.execute(
                f"SELECT recipient, revoked IS NOT NULL, expires IS NOT NULL AND expires <= ? FROM keys "
                f"WHERE owner = ? AND {_SIGNING} ORDER BY id DESC", (int(self._clock()), owner)).fetchall()
        keys = [(signing.parse_verify_key(text), revoked, expired) for text, revoked, expired in rows]
        return signing.SignerKeys(usable=tuple(k for k, revoked, expired in keys if not revoked and not expired),
                                  revoked=tuple(k for k, revoked, _ in keys if revoked),
                                  kinds=frozenset(k.kind for k, _, _ in keys))

    def partner_certificates_for(self, address: Address) -> dict[str, list[str]]:
        """{kind: [certificate text]} of the most specific owner with usable
        S/MIME or OpenPGP certificates (never revoked or expired ones). Asked
        only for recipients without an age key, so the age path costs nothing more."""
        return self._cached(("partner-certs", address), lambda: self._partner_certificates_for(address))

    def _partner_certificates_for(self, address: Address) -> dict[str, list[str]]:
        rows = self._select_first_owner(
            f"SELECT owner, kind, recipient FROM keys WHERE scope = 'remote' AND {_PARTNER} "
            "AND owner IN ({owners}) AND revoked IS NULL AND (expires IS NULL OR expires > ?) ORDER BY id",
            self._owners(address), int(self._clock()))
        out: dict[str, list[str]] = {}
        for _, kind, text in rows:
            out.setdefault(kind, []).append(text)
        return out

    def partner_certificate_expired(self, address: Address) -> bool:
        """True when the most specific owner holds S/MIME or OpenPGP certificates
        and all of them are expired (not revoked): the RCPT reply says so."""
        self._checked()  # what is read here was verified too
        rows = self._select_first_owner(
            f"SELECT owner, expires FROM keys WHERE scope = 'remote' AND {_PARTNER} AND owner IN ({{owners}}) "
            "AND revoked IS NULL", self._owners(address))
        now = int(self._clock())
        return bool(rows) and all(expires is not None and expires <= now for _, expires in rows)

    def partner_secrets_for(self, address: Address) -> list[tuple[str, str, bytes]]:
        """(kind, public text, secret) of every local S/MIME or OpenPGP key that
        may open mail for the address, most specific owner first (expired and
        revoked included: mail sealed to them may still be in flight)."""
        return list(self._cached(("partner-secrets", address), lambda: self._partner_secrets_for(address)))

    def _partner_secrets_for(self, address: Address) -> tuple[tuple[str, str, bytes], ...]:
        owners = self._owners(address)
        marks = ",".join("?" * len(owners))
        with _sqlite_errors(self.path):
            rows = self._db.execute(
                f"SELECT owner, kind, recipient, secret FROM keys WHERE scope = 'local' AND {_PARTNER} "
                f"AND owner IN ({marks}) ORDER BY id DESC", owners).fetchall()
        rank = {owner: i for i, owner in enumerate(owners)}
        rows.sort(key=lambda r: rank[r[0]])
        return tuple((kind, public, self.master().open(secret, _identity_context(owner, public)))
                     for owner, kind, public, secret in rows)

    def import_partner_key(self, owner: str, kind: str, public: str, *, secret: bytes | None = None,
                           label: str = "", source: str = "imported", expires: int | None = None) -> KeyRecord:
        """An S/MIME or OpenPGP certificate (remote), or with `secret` our own key
        of that kind (local, the secret sealed under the master key)."""
        if kind not in PARTNER_KINDS:
            raise KeystoreError(f"partner key kind must be one of {', '.join(PARTNER_KINDS)}")
        owner = _owner(owner)
        sealed = None
        if secret is not None:
            sealed = self.master().seal(secret, _identity_context(owner, public))
        with self._change():
            return self._insert(LOCAL if secret is not None else REMOTE, owner, public, kind, sealed, label,
                                source, expires)

    def inbound_policy_for(self, address: Address) -> tuple[str, str] | None:
        """(owner, policy) of the most specific inbound policy for a sender."""
        return self._cached(("inbound-policy", address), lambda: self._inbound_policy_for(address))

    def _inbound_policy_for(self, address: Address) -> tuple[str, str] | None:
        rows = self._select_first_owner("SELECT owner, policy FROM inbound_policies WHERE owner IN ({owners})",
                                        self._owners(address))
        return (rows[0][0], rows[0][1]) if rows else None

    def policy_for(self, address: Address) -> tuple[str, str] | None:
        """(owner, policy) of the most specific policy set for the address, if any."""
        return self._cached(("policy", address), lambda: self._policy_for(address))

    def _policy_for(self, address: Address) -> tuple[str, str] | None:
        rows = self._select_first_owner("SELECT owner, policy FROM policies WHERE owner IN ({owners})",
                                        self._owners(address))
        return (rows[0][0], rows[0][1]) if rows else None

    # --- administration -------------------------------------------------------

    def _records(self, where: str = "1", args: tuple = ()) -> list[KeyRecord]:
        with _sqlite_errors(self.path):
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM keys WHERE {where} ORDER BY owner, id", args)
            return [KeyRecord(*row) for row in rows.fetchall()]

    def list_keys(self) -> list[KeyRecord]:
        return self._records()

    def find(self, target: str) -> list[KeyRecord]:
        """Keys named by a fingerprint, or every key of an owner (address or @domain)."""
        if looks_like_fingerprint(target) and "@" not in target:
            return self._records("fingerprint = ?", (normalise(target),))
        return self._records("owner = ?", (_owner(target),))

    def _insert(self, scope: str, owner: str, recipient: str, kind: str, secret: bytes | None,
                label: str, source: str, expires: int | None) -> KeyRecord:
        now = int(self._clock())
        try:
            cursor = self._db.execute(
                "INSERT INTO keys (scope, owner, kind, recipient, fingerprint, secret, label, source, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (scope, owner, kind, recipient, fingerprint(recipient), secret, label, source, now, expires))
        except sqlite3.IntegrityError:
            raise Conflict(f"{owner} already has the key {fingerprint(recipient)}") from None
        self._put("keys", cursor.lastrowid)
        record = self._records("id = ?", (cursor.lastrowid,))[0]
        self._audit(f"key.{'generate' if scope == LOCAL else 'import'}", owner,
                    {"fingerprint": record.fingerprint, "kind": kind, "source": source, "expires": expires})
        return record

    def _new_identity(self, owner: str, classic: bool, label: str, source: str,
                      expires: int | None) -> KeyRecord:
        identity = age.generate(classic=classic)
        recipient = str(identity.recipient())
        secret = self.master().seal(str(identity).encode(), _identity_context(owner, recipient))
        return self._insert(LOCAL, owner, recipient, kind_of(identity.recipient()), secret, label, source, expires)

    def _new_signing_key(self, owner: str, kind: str, label: str, source: str,
                         expires: int | None) -> KeyRecord:
        key = signing.generate(kind)
        public = str(key.public())
        secret = self.master().seal(str(key).encode(), _identity_context(owner, public))
        return self._insert(LOCAL, owner, public, kind, secret, label, source, expires)

    def generate(self, owner: str, *, classic: bool = False, label: str = "",
                 expires: int | None = None) -> KeyRecord:
        """A new local identity for owner (post-quantum hybrid unless classic)."""
        return self.generate_keys(owner, classic=classic, label=label, expires=expires)[0]

    def generate_keys(self, owner: str, *, classic: bool = False, signing_kind: str | None = None,
                      label: str = "", expires: int | None = None) -> list[KeyRecord]:
        """A new encryption identity and, with signing_kind, a signing key
        beside it (one transaction: both or neither)."""
        owner = _owner(owner)
        if signing_kind is not None and signing_kind not in SIGNING_KINDS:
            raise KeystoreError(f"signing key kind must be one of {', '.join(SIGNING_KINDS)}")
        with self._change():
            made = [self._new_identity(owner, classic, label, "generated", expires)]
            if signing_kind is not None:
                made.append(self._new_signing_key(owner, signing_kind, label, "generated", expires))
            return made

    def generate_signing(self, owner: str, kind: str = signing.HYBRID, *, label: str = "",
                         expires: int | None = None) -> KeyRecord:
        """A new local signing key for owner (beside its encryption keys)."""
        if kind not in SIGNING_KINDS:
            raise KeystoreError(f"signing key kind must be one of {', '.join(SIGNING_KINDS)}")
        owner = _owner(owner)
        with self._change():
            return self._new_signing_key(owner, kind, label, "generated", expires)

    def import_recipient(self, owner: str, recipient: PublicKey, *, label: str = "",
                         source: str = "imported", expires: int | None = None) -> KeyRecord:
        """A public key to seal owner's mail to."""
        owner = _owner(owner)
        with self._change():
            return self._insert(REMOTE, owner, str(recipient), kind_of(recipient), None, label, source, expires)

    def import_many(self, keys: list[tuple[str, PublicKey, int | None]], *,
                    label: str = "", source: str = "imported") -> list[KeyRecord]:
        """Several (owner, recipient, expires) in one transaction: all are imported, or none."""
        keys = [(_owner(owner), r, exp) for owner, r, exp in keys]
        with self._change():
            return [self._insert(REMOTE, owner, str(r), kind_of(r), None, label, source, exp)
                    for owner, r, exp in keys]

    def export(self, owner: str) -> list[KeyRecord]:
        """The current public keys of owner's local identities (for partners to import).

        Checked first: a key added without the master key is never handed out."""
        owner = _owner(owner)
        self._checked()
        now = int(self._clock())
        records = [r for r in self._records("scope = 'local' AND owner = ?", (owner,)) if r.status(now) == "active"]
        if not records:
            raise NotFound(f"no active local key for {owner} (see `mailseal keys generate`)")
        return records

    def revoke(self, target: str, reason: str = "", fingerprints=None) -> list[KeyRecord]:
        """Revoke one key (by fingerprint) or every unrevoked key of an owner
        (only those with the given fingerprints, if any are given).

        A revoked remote key is never sealed to again. A revoked local key is
        no longer exported, but still opens mail already sealed to it.
        """
        with self._change():
            records = [r for r in self.find(target) if r.revoked is None
                       and (fingerprints is None or r.fingerprint in fingerprints)]
            if not records:
                raise NotFound(f"no unrevoked key matches {target}")
            now = int(self._clock())
            for record in records:
                self._take("keys", record.id)
                self._db.execute("UPDATE keys SET revoked = ?, reason = ? WHERE id = ?", (now, reason, record.id))
                self._put("keys", record.id)
                self._audit("key.revoke", record.owner, {"fingerprint": record.fingerprint, "reason": reason})
            return [self._records("id = ?", (r.id,))[0] for r in records]

    def rotate(self, owner: str) -> tuple[KeyRecord, list[KeyRecord]]:
        """A new local identity of the same kind; the old ones retire but keep opening mail.

        Signing keys rotate with it: a new one of the same kind, the old one
        retired (no longer signs; partners keep its public key during the
        overlap and revoke it when they like).
        """
        rotated = self.rotate_keys(owner)
        return rotated[0]

    def rotate_keys(self, owner: str) -> list[tuple[KeyRecord, list[KeyRecord]]]:
        """(new, retired) for each family (encryption first, then signing) with an active key."""
        owner = _owner(owner)
        with self._change():
            current = [r for r in self._records("scope = 'local' AND owner = ?", (owner,))
                       if r.status(self._clock()) == "active"]
            if not any(family(r.kind) == "encryption" for r in current):
                raise NotFound(f"no active local key for {owner} to rotate (use `keys generate`)")
            now = int(self._clock())
            out = []
            for kinds in ("encryption", "signing"):
                old = [r for r in current if family(r.kind) == kinds]
                if not old:
                    continue
                for record in old:
                    self._take("keys", record.id)
                    self._db.execute("UPDATE keys SET retired = ? WHERE id = ?", (now, record.id))
                    self._put("keys", record.id)
                source = f"rotated from {old[-1].fingerprint}"
                if kinds == "encryption":
                    new = self._new_identity(owner, old[-1].kind == "X25519", old[-1].label, source, None)
                else:
                    new = self._new_signing_key(owner, old[-1].kind, old[-1].label, source, None)
                self._audit("key.rotate", owner, {"new": new.fingerprint, "retired": [r.fingerprint for r in old]})
                out.append((new, [self._records("id = ?", (r.id,))[0] for r in old]))
            return out

    def delete(self, target: str) -> list[KeyRecord]:
        """Remove keys for good: a deleted local identity opens nothing any more."""
        with self._change():
            records = self.find(target)
            if not records:
                raise NotFound(f"no key matches {target}")
            for record in records:
                self._take("keys", record.id)
                self._db.execute("DELETE FROM keys WHERE id = ?", (record.id,))
                self._audit("key.delete", record.owner, {"fingerprint": record.fingerprint, "scope": record.scope})
            return records

    def _set_in(self, table: str, action: str, owner: str, policy: str) -> None:
        owner = _owner(owner)
        with self._change():
            self._take(table, owner)
            self._db.execute(f"INSERT INTO {table} (owner, policy, updated) VALUES (?, ?, ?) ON CONFLICT (owner) "
                             "DO UPDATE SET policy = excluded.policy, updated = excluded.updated",
                             (owner, policy, int(self._clock())))
            self._put(table, owner)
            self._audit(f"{action}.set", owner, {"policy": policy})

    def _unset_in(self, table: str, action: str, owner: str, what: str) -> None:
        owner = _owner(owner)
        with self._change():
            self._take(table, owner)
            if not self._db.execute(f"DELETE FROM {table} WHERE owner = ?", (owner,)).rowcount:
                raise NotFound(f"no {what} is set for {owner}")
            self._audit(f"{action}.unset", owner, {})

    def _list_in(self, table: str) -> list[tuple[str, str, int]]:
        with _sqlite_errors(self.path):
            return self._db.execute(f"SELECT owner, policy, updated FROM {table} ORDER BY owner").fetchall()

    def set_policy(self, owner: str, policy: str) -> None:
        if policy not in POLICIES:
            raise KeystoreError(f"policy must be one of {', '.join(POLICIES)}")
        self._set_in("policies", "policy", owner, policy)

    def unset_policy(self, owner: str) -> None:
        self._unset_in("policies", "policy", owner, "policy")

    def list_policies(self) -> list[tuple[str, str, int]]:
        return self._list_in("policies")

    def set_inbound_policy(self, owner: str, policy: str) -> None:
        """What mail claiming to come from owner (a sending domain or address) must be."""
        if policy not in INBOUND_POLICIES:
            raise KeystoreError(f"inbound policy must be one of {', '.join(INBOUND_POLICIES)}")
        self._set_in("inbound_policies", "policy.inbound", owner, policy)

    def unset_inbound_policy(self, owner: str) -> None:
        self._unset_in("inbound_policies", "policy.inbound", owner, "inbound policy")

    def list_inbound_policies(self) -> list[tuple[str, str, int]]:
        return self._list_in("inbound_policies")

    def audit_entries(self) -> list[audit.AuditEntry]:
        with _sqlite_errors(self.path):
            return audit_entries(self._db)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (triggers keep their inner `;`)."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined)
            current = []
    return out

