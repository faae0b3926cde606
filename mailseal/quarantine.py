"""Quarantine: refused inbound mail kept in the state directory for the admin.

Each entry is two files, written atomically: ID.eml (the message exactly as
received) and ID.json (envelope, reason, time, client). Releasing it
(mailseal/release.py) takes a recipient off the entry only once the next hop
accepted the mail for that recipient, and the entry goes with the last one.

Limits (`[inbound] quarantine_max_age`, `quarantine_max_size`): entries older
than the age limit go, then the oldest until the rest fit the size quota;
each removal is logged. The daemon enforces them after a put (at most once a
PURGE_INTERVAL, or at once when the quota is passed), `quarantine purge` on
demand. The entry just written is never the one removed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

_ID = re.compile(r"[0-9A-F]{16}")
PURGE_INTERVAL = 3600.0
log = logging.getLogger("mailseal.quarantine")


class QuarantineError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    id: str
    received: int
    mail_from: str
    rcpts: list[str]
    reason: str
    client: dict
    size: int

    @property
    def client_text(self) -> str:
        """The client that sent it, for people: `name [addr]`, `addr`, or `-`."""
        return describe_client(self.client)


def describe_client(client: dict) -> str:
    # XFORWARD from Postfix (NAME, ADDR), else the peer the listener saw.
    name, addr = client.get("NAME"), client.get("ADDR")
    if addr and addr.upper().startswith("IPV6:"):
        addr = addr[5:]
    if name and name.lower() != "unknown" and addr:
        return f"{name} [{addr}]"
    if addr or name:
        return addr or name
    peer = client.get("peer")
    match = re.fullmatch(r"\('([^']*)', (\d+)(?:, \d+, \d+)?\)", peer or "")
    if match:
        return f"{match.group(1)} port {match.group(2)}"
    return peer or "-"


class Quarantine:
    def __init__(self, directory: Path, *, max_age: int | None = None, max_size: int | None = None,
                 clock=time.time) -> None:
        self.dir = Path(directory)
        self.max_age, self.max_size = max_age, max_size
        self._clock = clock
        self._last_purge: float | None = None
        self._size: int | None = None  # total size as of the last purge, plus puts since

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)

    def put(self, message: bytes, mail_from: str, rcpts: list[str], reason: str, client: dict) -> str:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry_id = os.urandom(8).hex().upper()
        entry = Entry(entry_id, int(self._clock()), mail_from, list(rcpts), reason, client, len(message))
        self._write(self.dir / f"{entry_id}.eml", message)
        # The .json file is written last: an entry without it is incomplete.
        self._write(self.dir / f"{entry_id}.json", json.dumps(asdict(entry)).encode())
        self._sync_dir()
        self._enforce(entry_id, len(message))
        return entry_id

    def _enforce(self, just_put: str, size: int) -> None:
        """The limits, after a put: a full pass at most once an interval, or
        when the size known so far passes the quota."""
        if self.max_age is None and self.max_size is None:
            return
        if self._size is not None:
            self._size += size
        due = self._last_purge is None or self._clock() - self._last_purge >= PURGE_INTERVAL
        if due or (self.max_size is not None and self._size is not None and self._size > self.max_size):
            try:
                self.purge(keep=just_put)
            except OSError as exc:
                log.error("quarantine: purge failed: %s", exc.strerror)

    def purge(self, *, keep: str | None = None) -> list[tuple[Entry, str]]:
        """Remove what the limits no longer allow: too old, then oldest first
        past the size quota. Returns (entry, why) for each one removed."""
        now = self._clock()
        entries = self.list()
        removed: list[tuple[Entry, str]] = []
        if self.max_age is not None:
            for e in entries:
                if e.id != keep and now - e.received > self.max_age:
                    removed.append((e, f"older than quarantine_max_age ({self.max_age} s)"))
        gone = {e.id for e, _ in removed}
        rest = [e for e in entries if e.id not in gone]
        total = sum(e.size for e in rest)
        if self.max_size is not None:
            for e in rest:  # oldest first
                if total <= self.max_size:
                    break
                if e.id == keep:
                    continue
                removed.append((e, f"over quarantine_max_size ({self.max_size} bytes)"))
                total -= e.size
        for entry, why in removed:
            self.remove(entry.id)
            log.warning("quarantine: purged %s (reason=%s, received %s, %d bytes): %s", entry.id, entry.reason,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.received)), entry.size, why)
        self._last_purge, self._size = now, total
        return removed

    def _sync_dir(self) -> None:
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def list(self) -> list[Entry]:
        if not self.dir.is_dir():
            return []
        entries = []
        for meta in self.dir.glob("*.json"):
            try:
                # Oldest first; within one second, in the order written.
                entries.append((Entry(**json.loads(meta.read_text())), meta.stat().st_mtime_ns))
            except (ValueError, TypeError, OSError):
                continue
        return [e for e, _ in sorted(entries, key=lambda pair: (pair[0].received, pair[1]))]

    @staticmethod
    def _checked(entry_id: str) -> str:
        entry_id = entry_id.strip().upper()
        if not _ID.fullmatch(entry_id):
            raise QuarantineError(f"{entry_id!r} is not a quarantine id (16 hex digits)")
        return entry_id

    def get(self, entry_id: str) -> tuple[Entry, bytes]:
        entry_id = self._checked(entry_id)
        try:
            entry = Entry(**json.loads((self.dir / f"{entry_id}.json").read_text()))
            return entry, (self.dir / f"{entry_id}.eml").read_bytes()
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id}") from None
        except (ValueError, TypeError) as exc:
            raise QuarantineError(f"quarantine entry {entry_id} is damaged: {exc}") from None

    @contextmanager
    def held(self, entry_id: str) -> Iterator[None]:
        """The entry, kept from a second release or delete meanwhile."""
        entry_id = self._checked(entry_id)
        try:
            fd = os.open(self.dir / f"{entry_id}.eml", os.O_RDONLY)
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise QuarantineError(f"quarantine entry {entry_id} is being released or deleted "
                                      f"by another command") from None
            if not (self.dir / f"{entry_id}.json").exists():
                raise QuarantineError(f"no quarantined message {entry_id}")  # gone while we waited
            yield
        finally:
            os.close(fd)

    def keep_only(self, entry: Entry, rcpts: list[str]) -> None:
        """The entry now stands for these recipients only (the others got it)."""
        self._write(self.dir / f"{entry.id}.json", json.dumps(asdict(replace(entry, rcpts=list(rcpts)))).encode())
        self._sync_dir()

    def remove(self, entry_id: str) -> None:
        # The .json file first: without it the entry no longer counts.
        for suffix in (".json", ".eml"):
            (self.dir / f"{entry_id}{suffix}").unlink(missing_ok=True)


def quarantine_for(cfg) -> Quarantine:
    """The quarantine of a configuration with an [inbound] section, with its limits."""
    return Quarantine(cfg.server.state_dir / "quarantine", max_age=cfg.inbound.quarantine_max_age,
                      max_size=cfg.inbound.quarantine_max_size)
