"""Quarantine: refused inbound mail kept in the state directory for the admin.

Each entry is two files, written atomically: ID.eml (the message exactly as
received) and ID.json (envelope, reason, time, client). Releasing it
(mailseal/release.py) takes a recipient off the entry only once the next hop
accepted the mail for that recipient, and the entry goes with the last one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

_ID = re.compile(r"[0-9A-F]{16}")


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


class Quarantine:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

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
        entry = Entry(entry_id, int(time.time()), mail_from, list(rcpts), reason, client, len(message))
        self._write(self.dir / f"{entry_id}.eml", message)
        # The .json file is written last: an entry without it is incomplete.
        self._write(self.dir / f"{entry_id}.json", json.dumps(asdict(entry)).encode())
        self._sync_dir()
        return entry_id

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
        for meta in sorted(self.dir.glob("*.json")):
            try:
                entries.append(Entry(**json.loads(meta.read_text())))
            except (ValueError, TypeError, OSError):
                continue
        return sorted(entries, key=lambda e: e.received)

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
