"""Replay defence: the date window and the durable cache of two-phase claims.

A bundle older than the window or dated too far in the future is refused.
Every opened bundle is claimed per recipient mailbox, keyed on (recipient,
serial, tag): the tag (bundle.Opened.tag, opaque here) is something a forger
who saw the visible serial cannot reproduce, so a forgery cannot pre-empt
the real bundle. A claim is

* *pending* (with the instance that holds it and the time) from before the
  message is relayed; it is on disk before `aclaim` returns;
* *delivered* once the next hop accepted it (`delivered`), or removed when
  delivery failed (`release`), so the MTA's retry is not taken for a replay.

A new claim that meets a delivered one is a replay (permanent refusal); one
that meets a pending claim of a live instance is refused for now (InFlight,
temporary: the MTA retries); one that meets a pending claim of a dead
instance takes it over and proceeds: the first attempt may or may not have
reached the next hop, so the message may arrive twice, but it is never lost.
Rows of the old schema (recipient, serial, expires; no tag, no state) are
migrated in place as delivered claims that match any tag.

The contract for any backend (SQLite here; PostgreSQL can follow): the
check-and-write of one claim is atomic against every other process sharing
the database, nothing is answered before the claim is durable, and
`delivered`/`release` need not be durable (a crash before they reach the
disk leaves a pending claim of a dead instance, taken over by the retry).

SQLite durability: WAL mode with synchronous=NORMAL, and every batch of
claims is followed by an fsync of the WAL file before anyone is told it
happened. That is what synchronous=FULL does inside COMMIT, moved out of the
write lock and, on the event loop, into a helper thread: the loop never
waits for the disk, and claims that arrive meanwhile share the next fsync
(group commit). A failed fsync undoes the batch's claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import liveness
from .purge_clock import PurgeClock, elapsed_clock

log = logging.getLogger("mailseal.replay")

SCHEMA_VERSION = 2  # 1 (user_version 0, table `seen`): one row per (recipient, serial), no tag, no state
PURGE_EVERY = 1000  # claims written by this process between two purges
PENDING, DELIVERED = "pending", "delivered"
LEGACY_TAG = ""  # a migrated row: matches any tag of its (recipient, serial)


class ReplayError(Exception):
    """The bundle must be refused; the message says why, for the SMTP reply.

    `temporary`: the refusal may not hold later (4xx, the MTA retries).
    """

    temporary = False


class TooOld(ReplayError):
    pass


class Replayed(ReplayError):
    pass


class FromTheFuture(ReplayError):
    """Dated beyond the allowed clock skew: most often a clock that is off, which gets fixed."""

    temporary = True


class InFlight(ReplayError):
    """A live instance holds a pending claim on the same bundle: it is being delivered now."""

    temporary = True


class ClockWentBack(ReplayError):
    """The bundle is in the window by our clock, but the cache has already
    forgotten claims that old: the clock was stepped back after a purge."""

    temporary = True


class CacheUnavailable(ReplayError):
    """The cache cannot be read or written: a temporary failure, never a pass."""

    temporary = True


@dataclass(frozen=True)
class Window:
    max_age: int  # seconds
    max_skew: int  # seconds

    def check(self, date: int, now: float) -> None:
        if date < now - self.max_age:
            raise TooOld(f"sealed {int(now - date)} s ago, older than the replay window of {self.max_age} s")
        if date > now + self.max_skew:
            raise FromTheFuture(f"dated {int(date - now)} s in the future (more than the allowed clock skew)")

    def forgettable_before(self, cutoff: float) -> int:
        """Claims of bundles dated before this can be dropped at `cutoff`: the window refuses them."""
        return int(cutoff) - self.max_age - 1


@dataclass(frozen=True, slots=True)
class Claim:
    recipient: str
    serial: str
    tag: str
    date: int


@dataclass(slots=True)
class _Request:
    claim: Claim
    future: asyncio.Future


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS claims (recipient TEXT NOT NULL, serial TEXT NOT NULL, tag TEXT NOT NULL, "
    "date INTEGER NOT NULL, state TEXT NOT NULL, instance INTEGER, claimed INTEGER, "
    "PRIMARY KEY (recipient, serial, tag)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS claims_date ON claims (date)",
    f"CREATE INDEX IF NOT EXISTS claims_pending ON claims (instance) WHERE state = '{PENDING}'",
    "CREATE TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, "
    "pid INTEGER NOT NULL, start TEXT NOT NULL, started INTEGER NOT NULL, heartbeat INTEGER NOT NULL)",
    # purged_through: the highest purge cutoff used by any instance
    "CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class ReplayCache:
    def __init__(self, path: Path, window: Window, clock: Callable[[], float] = time.time, *,
                 elapsed: Callable[[], float] = elapsed_clock, fsync: Callable[[int], None] = os.fsync,
                 host: str | None = None, heartbeat: float | None = liveness.HEARTBEAT_INTERVAL,
                 purge_every: int = PURGE_EVERY) -> None:
        """`clock`: the wall clock; `elapsed`: a clock that is never stepped (see purge_clock);
        `fsync`: what makes a file durable; `host`: this node's name in the instance table;
        `heartbeat`: seconds between heartbeats (None: none, for tests); `purge_every`:
        claims written between two purges."""
        self.path = Path(path)
        self.window = window
        self._clock = clock
        self._purge_clock = PurgeClock(clock, elapsed)
        self._fsync = fsync
        self._lock = threading.Lock()  # the connection: event loop, fsync helper, heartbeat
        self._written, self._purge_every = 0, purge_every
        self._queue: list[_Request] = []
        self._flusher: asyncio.Task | None = None
        self._marks: list[Claim] = []  # delivered, to be written with the next batch
        self._failed_marks: list[Claim] = []  # ...and those whose write failed, with the one after
        self._unfinished: list[Claim] = []  # releases that failed, to retry
        self._wal_fd: int | None = None
        self._syncer: ThreadPoolExecutor | None = None  # one thread for fsync, made on first use
        self.process = liveness.this_process(host)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._errors():
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
        try:
            with self._errors():
                self._db.execute("PRAGMA busy_timeout = 5000")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")  # + our own WAL fsync, see above
                self._migrate()
                self._started = int(clock())
                self.instance = self._db.execute(
                    "INSERT INTO instances (host, pid, start, started, heartbeat) VALUES (?, ?, ?, ?, ?)",
                    (self.process.host, self.process.pid, self.process.start, self._started,
                     self._started)).lastrowid
            self._sync()
        except OSError as exc:
            self._db.close()
            raise CacheUnavailable(f"replay cache {self.path}: fsync failed: {exc}") from None
        except BaseException:
            self._db.close()
            raise
        self._stop = threading.Event()
        self._beater = None
        if heartbeat:
            self._beater = threading.Thread(target=self._beat, args=(heartbeat,), name="replay-heartbeat",
                                            daemon=True)
            self._beater.start()

    # --- setting up ----------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"replay cache {self.path}: {exc}") from None

    def _migrate(self) -> None:
        """Create the schema, or bring an older one to it, in one transaction (workers start together)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CacheUnavailable(f"replay cache {self.path}: written by a newer mailseal "
                                       f"(schema {version}); refusing to use it")
            if version < SCHEMA_VERSION:
                for statement in SCHEMA:
                    db.execute(statement)
                if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'").fetchone():
                    # expires was date + window + 1: a claim of any tag, already delivered.
                    db.execute(f"INSERT OR IGNORE INTO claims SELECT recipient, serial, '{LEGACY_TAG}', "
                               f"expires - ? - 1, '{DELIVERED}', NULL, NULL FROM seen", (self.window.max_age,))
                    db.execute("DROP TABLE seen")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _sync(self) -> None:
        """fsync the WAL (and, the first time, the directory that holds it)."""
        if self._wal_fd is None:
            wal = Path(str(self.path) + "-wal")
            if not wal.exists():
                return  # nothing written yet
            self._wal_fd = os.open(wal, os.O_RDONLY)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                self._fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._fsync(self._wal_fd)

    def close(self) -> None:
        """Stop the heartbeat and leave: claims still pending here are now a dead instance's."""
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        if self._marks or self._failed_marks:
            self._write_marks()
        with contextlib.suppress(sqlite3.Error), self._lock:
            self._db.execute("DELETE FROM instances WHERE id = ?", (self.instance,))
        self._db.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        if self._syncer is not None:
            self._syncer.shutdown(wait=False)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    # INSERT OR REPLACE: a purge may have dropped a row that looked stale.
                    self._db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                                     (self.instance, self.process.host, self.process.pid, self.process.start,
                                      self._started, int(self._clock())))
                    self._finish_unfinished()
            except sqlite3.Error as exc:
                log.error("replay cache %s: heartbeat: %s", self.path, exc)

    # --- claiming -------------------------------------------------------------------

    async def aclaim(self, recipient: str, serial: str, tag: str, date: int) -> Claim:
        """Claim (recipient, serial, tag) as pending; return once it is on disk.

        Raises a ReplayError (see `temporary`). Cancelled while waiting, the
        claim is undone (or never written), so the MTA's retry is accepted.
        """
        [outcome] = await self.aclaim_all([recipient], serial, tag, date)
        if isinstance(outcome, ReplayError):
            raise outcome
        return outcome

    async def aclaim_all(self, recipients: Sequence[str], serial: str, tag: str,
                         date: int) -> list[Claim | ReplayError]:
        """One claim per recipient of one bundle: each a Claim or the ReplayError that refused it.

        Cancelled while waiting, whatever was claimed is released: nothing
        stays pending under a live instance for a message nobody delivers.
        """
        if not tag:
            raise ValueError("a replay claim needs the bundle's tag")
        try:
            self.window.check(date, self._clock())
        except ReplayError as exc:
            return [exc] * len(recipients)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in recipients]
        self._queue += [_Request(Claim(r, serial, tag, date), f) for r, f in zip(recipients, futures)]
        self._kick(loop)
        try:
            for future in futures:  # all are answered by the same batch
                with contextlib.suppress(ReplayError):
                    await future
        except asyncio.CancelledError:
            log.warning("replay cache: claim abandoned by its caller (client gone?): undone")
            for future in futures:
                future.cancel()  # not written yet: never will be; being written: _flush undoes it
            self.release([f.result() for f in futures if not f.cancelled() and f.exception() is None])
            raise
        return [f.exception() or f.result() for f in futures]

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a flush is under way."""
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue or self._marks:
            batch = [r for r in self._queue if not r.future.done()]
            marks = self._failed_marks + self._marks
            self._queue, self._marks, self._failed_marks = [], [], []
            claims = [r.claim for r in batch]
            try:
                # The statements and the COMMIT are quick (no fsync inside):
                # done here, they cost less than a thread hand-off.
                outcomes = self._write_batch(claims, marks)
                if claims:  # marks alone need not wait for the disk
                    await self._sync_batch(loop, claims, outcomes)
            except CacheUnavailable as exc:
                outcomes = [exc] * len(batch)
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets an answer
                log.error("replay cache %s: %s: %s", self.path, type(exc).__name__, exc)
                outcomes = [CacheUnavailable(f"replay cache {self.path}: internal error")] * len(batch)
            abandoned = []
            for request, outcome in zip(batch, outcomes, strict=True):
                if request.future.done():  # its caller went away meanwhile
                    if outcome is None:
                        abandoned.append(request.claim)
                elif outcome is None:
                    request.future.set_result(request.claim)
                else:
                    request.future.set_exception(outcome)
            self.release(abandoned)

    async def _sync_batch(self, loop, claims: list[Claim], outcomes: list[ReplayError | None]) -> None:
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-fsync")
        try:
            await loop.run_in_executor(self._syncer, self._sync)
        except OSError as exc:
            self._undo([c for c, o in zip(claims, outcomes, strict=True) if o is None])
            raise CacheUnavailable(f"replay cache {self.path}: fsync failed: {exc}") from None

    def _write_batch(self, claims: list[Claim], marks: list[Claim]) -> list[ReplayError | None]:
        """One transaction: the delivered marks, then the claims (each answered)."""
        now = self._clock()
        outcomes: list[ReplayError | None] = []
        try:
            with self._lock, self._errors():
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._mark_delivered(marks)
                    self._finish_unfinished()
                    self._written += len(claims)
                    if self._written >= self._purge_every:
                        self._written = 0
                        self._purge()
                    if claims:
                        row = self._db.execute("SELECT value FROM marks WHERE name = 'purged_through'").fetchone()
                        forgotten_before = self.window.forgettable_before(row[0]) if row else None
                    for claim in claims:
                        if forgotten_before is not None and claim.date < forgotten_before:
                            outcomes.append(ClockWentBack(
                                f"the replay cache has forgotten claims dated before {forgotten_before}: "
                                "the clock went back"))
                            continue
                        outcomes.append(self._claim_one(claim, now))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except BaseException:
            self._failed_marks = marks + self._failed_marks  # tried again with the next batch
            raise
        return outcomes

    def _claim_one(self, claim: Claim, now: float) -> ReplayError | None:
        """Inside the write transaction: the check and the write of one claim."""
        key = (claim.recipient, claim.serial, claim.tag)
        # At most one row: a legacy row refuses every tag, so none is added beside it.
        row = self._db.execute("SELECT state, instance FROM claims WHERE recipient = ? AND serial = ? "
                               "AND tag IN (?, ?)", (*key, LEGACY_TAG)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (*key, claim.date, PENDING, self.instance, int(now)))
            return None
        state, holder = row
        if state == DELIVERED:
            return Replayed(f"serial {claim.serial} was already delivered to {claim.recipient}")
        if self._alive(holder, now):
            return InFlight(f"serial {claim.serial} for {claim.recipient} is being delivered right now")
        log.warning("replay cache: taking over a claim left pending by dead instance %s", holder)
        self._db.execute("UPDATE claims SET instance = ?, claimed = ? WHERE recipient = ? AND serial = ? "
                         "AND tag = ?", (self.instance, int(now), *key))
        return None

    def _alive(self, instance_id: int | None, now: float) -> bool:
        row = self._db.execute("SELECT host, pid, start, heartbeat FROM instances WHERE id = ?",
                               (instance_id,)).fetchone()
        holder = liveness.Process(*row[:3]) if row else None
        return liveness.alive(holder, row[3] if row else 0, now, self.process.host)

    def _undo(self, claims: list[Claim]) -> None:
        """Best effort: remove claims whose durability is unknown (so the retry is not refused)."""
        with contextlib.suppress(sqlite3.Error), self._lock:
            self._release(claims)

    # --- second phase ---------------------------------------------------------------

    def delivered(self, claims: Sequence[Claim]) -> None:
        """The next hop accepted the message: its claims now refuse any replay.

        Written with the next batch (at once if none is under way), and not
        waited for on disk: lost in a crash, the claim stays pending under a
        dead instance, and a replay would be taken for a retry (a duplicate).
        """
        if not claims:
            return
        self._marks += claims
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: now
            self._write_marks()
        else:
            self._kick(loop)

    def _write_marks(self) -> None:
        marks = self._failed_marks + self._marks
        self._marks, self._failed_marks = [], []
        try:
            self._write_batch([], marks)
        except CacheUnavailable as exc:
            log.error("%s: %d delivered claim(s) not marked yet, will retry", exc, len(marks))

    def release(self, claims: Sequence[Claim]) -> None:
        """Delivery failed (or was abandoned): forget the claims, so the MTA's retry is accepted.

        A claim already marked delivered stays: release after delivered changes nothing.
        """
        if self._marks or self._failed_marks:
            marked = {*self._marks, *self._failed_marks}
            claims = [c for c in claims if c not in marked]
        if not claims:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._release(claims)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # Kept and tried again with the next write or heartbeat: a
                # release that never happens would refuse the retry (InFlight)
                # for as long as this process lives.
                log.error("replay cache %s: release of %d claim(s) failed, will retry: %s", self.path,
                          len(claims), exc)
                self._unfinished += claims

    def _mark_delivered(self, claims: Sequence[Claim]) -> None:
        self._db.executemany(f"UPDATE claims SET state = '{DELIVERED}', instance = NULL "
                             "WHERE recipient = ? AND serial = ? AND tag = ?",
                             [(c.recipient, c.serial, c.tag) for c in claims])

    def _release(self, claims: Sequence[Claim]) -> None:
        # Only our own pending claim: one taken over meanwhile by another
        # instance, or already delivered, is not ours to remove.
        self._db.executemany(f"DELETE FROM claims WHERE recipient = ? AND serial = ? AND tag = ? "
                             f"AND state = '{PENDING}' AND instance = ?",
                             [(c.recipient, c.serial, c.tag, self.instance) for c in claims])

    def _finish_unfinished(self) -> None:
        """With the lock held: releases that failed before."""
        if self._unfinished:
            self._release(self._unfinished)
            self._unfinished = []

    # --- forgetting -----------------------------------------------------------------

    def purge(self) -> int:
        """Drop claims whose bundles the window refuses anyway; the number dropped."""
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._purge()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return dropped

    def _purge(self) -> int:
        """Inside a write transaction. The cutoff is safe against clock steps
        (purge_clock), and the highest one used is kept, so a clock stepped
        back later cannot make a forgotten bundle look new (ClockWentBack)."""
        cutoff = int(self._purge_clock.cutoff())
        self._db.execute("INSERT INTO marks VALUES ('purged_through', ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = max(value, excluded.value)", (cutoff,))
        dropped = self._db.execute("DELETE FROM claims WHERE date < ?",
                                   (self.window.forgettable_before(cutoff),)).rowcount
        self._db.execute(f"DELETE FROM instances WHERE heartbeat < ? AND NOT EXISTS (SELECT 1 FROM claims "
                         f"WHERE state = '{PENDING}' AND instance = instances.id)",
                         (int(self._clock()) - liveness.INSTANCE_TIMEOUT,))
        return dropped
