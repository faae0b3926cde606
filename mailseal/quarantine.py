"""Quarantine: refused inbound mail kept in the state directory for the admin.

Each entry is two files, written atomically: ID.eml (the message exactly as
received) and ID.json (envelope, reason, time, client). `release` hands the
message to the inbound next hop and deletes the entry only once the next hop
accepted it for every recipient.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
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
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return entry_id

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

    def get(self, entry_id: str) -> tuple[Entry, bytes]:
        entry_id = entry_id.strip().upper()
        if not _ID.fullmatch(entry_id):
            raise QuarantineError(f"{entry_id!r} is not a quarantine id (16 hex digits)")
        try:
            entry = Entry(**json.loads((self.dir / f"{entry_id}.json").read_text()))
            return entry, (self.dir / f"{entry_id}.eml").read_bytes()
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id}") from None
        except (ValueError, TypeError) as exc:
            raise QuarantineError(f"quarantine entry {entry_id} is damaged: {exc}") from None

    def remove(self, entry_id: str) -> None:
        for suffix in (".json", ".eml"):
            (self.dir / f"{entry_id}{suffix}").unlink(missing_ok=True)
