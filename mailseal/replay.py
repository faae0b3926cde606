"""Replay defence: the date window and the durable (recipient, serial) cache.

A bundle older than the window or dated too far in the future is refused.
Every opened (recipient, serial) is stored in SQLite until its window has
passed; the check-and-insert is one INSERT on a primary key, so two
connections (or, with a shared database, two nodes) racing on the same
serial cannot both win. When delivery to the next hop then fails, the entry
is removed again so the MTA's retry is not taken for a replay.

Durability: the database runs in WAL mode with synchronous=NORMAL, and every
change is followed by an fsync of the WAL file before anyone is told it
happened. That is what synchronous=FULL does inside COMMIT, moved out of the
write lock and, on the event loop, into a helper thread: the loop never
waits for the disk, and claims that arrive meanwhile share the next fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


class ReplayError(Exception):
    """The bundle must be refused; the message says why, for the SMTP reply."""


class TooOld(ReplayError):
    pass


class FromTheFuture(ReplayError):
    pass


class Replayed(ReplayError):
    pass


class CacheUnavailable(Exception):
    """The cache cannot be read or written: a temporary failure, never a pass."""


@dataclass(frozen=True)
class Window:
    max_age: int  # seconds
    max_skew: int  # seconds

    def check(self, date: int, now: float) -> None:
        if date < now - self.max_age:
            raise TooOld(f"sealed {int(now - date)} s ago, older than the replay window of {self.max_age} s")
        if date > now + self.max_skew:
            raise FromTheFuture(f"dated {int(date - now)} s in the future (more than the allowed clock skew)")


class ReplayCache:
    SCHEMA = ("CREATE TABLE IF NOT EXISTS seen (recipient TEXT NOT NULL, serial TEXT NOT NULL, "
              "expires INTEGER NOT NULL, PRIMARY KEY (recipient, serial)) WITHOUT ROWID",
              "CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires)")

    def __init__(self, path: Path, window: Window, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._inserts = 0
        self._pending: list = []
        self._flushing = False
        self._wal_fd: int | None = None
        self._syncer = None  # one thread for fsync, made on first use
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._errors():
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # + our own WAL fsync, see above
            for statement in self.SCHEMA:
                self._db.execute(statement)
        self._sync()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"replay cache {self.path}: {exc}") from None

    def _sync(self) -> None:
        """fsync the WAL (and, the first time, the directory that holds it)."""
        if self._wal_fd is None:
            wal = Path(str(self.path) + "-wal")
            if not wal.exists():
                return  # nothing written yet
            self._wal_fd = os.open(wal, os.O_RDONLY)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        os.fsync(self._wal_fd)

    def close(self) -> None:
        self._db.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        if self._syncer is not None:
            self._syncer.shutdown(wait=False)

    def claim(self, recipient: str, serial: str, date: int) -> None:
        """Check the window and record (recipient, serial); raise ReplayError if refused."""
        now = self._clock()
        self.window.check(date, now)
        # Kept until the bundle is too old to pass the window check anyway.
        expires = date + self.window.max_age + 1
        with self._lock, self._errors():
            try:
                self._db.execute("INSERT INTO seen VALUES (?, ?, ?)", (recipient, serial, expires))
            except sqlite3.IntegrityError:
                raise Replayed(f"serial {serial} was already delivered to {recipient}") from None
            self._inserts += 1
            if self._inserts % 1000 == 0:
                self._db.execute("DELETE FROM seen WHERE expires < ?", (int(now),))
            self._sync_or_fail()

    async def aclaim(self, recipient: str, serial: str, date: int) -> None:
        """claim() for the event loop, with group commit.

        Claims that arrive while a commit is under way are written together
        in the next transaction: one fsync for many messages, the same
        durability (nothing is answered before its claim is on disk) and the
        same atomicity (one INSERT each, in order).
        """
        self.window.check(date, self._clock())
        future = asyncio.get_running_loop().create_future()
        self._pending.append((recipient, serial, date + self.window.max_age + 1, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [b[:3] for b in batch]
                try:
                    # The INSERTs and the COMMIT are quick (no fsync inside):
                    # done here, they cost less than a thread hand-off.
                    outcomes = self._write_batch(rows)
                    if self._syncer is None:
                        from concurrent.futures import ThreadPoolExecutor

                        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-fsync")
                    try:
                        await loop.run_in_executor(self._syncer, self._sync)
                    except OSError as exc:
                        self._forget([r for r, o in zip(rows, outcomes, strict=True) if o is None])
                        raise CacheUnavailable(f"replay cache {self.path}: fsync failed: {exc}") from None
                except CacheUnavailable as exc:
                    outcomes = [exc] * len(batch)
                for (_, _, _, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:
            self._flushing = False

    def _write_batch(self, rows: list[tuple[str, str, int]]) -> list[Exception | None]:
        outcomes: list[Exception | None] = []
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for recipient, serial, expires in rows:
                    try:
                        self._db.execute("INSERT INTO seen VALUES (?, ?, ?)", (recipient, serial, expires))
                        outcomes.append(None)
                    except sqlite3.IntegrityError:
                        outcomes.append(Replayed(f"serial {serial} was already delivered to {recipient}"))
                self._inserts += len(rows)
                if self._inserts >= 1000:
                    self._inserts = 0
                    self._db.execute("DELETE FROM seen WHERE expires < ?", (int(self._clock()),))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return outcomes

    def _sync_or_fail(self) -> None:
        try:
            self._sync()
        except OSError as exc:
            raise CacheUnavailable(f"replay cache {self.path}: fsync failed: {exc}") from None

    def _forget(self, rows: list[tuple[str, str, int]]) -> None:
        """Best effort: undo claims whose durability is unknown (so the retry is not a 'replay')."""
        try:
            with self._lock:
                self._db.executemany("DELETE FROM seen WHERE recipient = ? AND serial = ?",
                                     [(r, s) for r, s, _ in rows])
        except sqlite3.Error:
            pass

    def release(self, recipient: str, serial: str) -> None:
        """Forget a claim whose delivery failed, so the MTA's retry is accepted."""
        with self._lock, self._errors():
            self._db.execute("DELETE FROM seen WHERE recipient = ? AND serial = ?", (recipient, serial))
            self._sync_or_fail()

    def purge(self) -> int:
        with self._lock, self._errors():
            return self._db.execute("DELETE FROM seen WHERE expires < ?", (int(self._clock()),)).rowcount
