"""The head file: the audit log's head kept outside the keystore.

The integrity record inside the keystore catches any edit made without the
master key, but not the whole file put back as an older copy: that copy is
consistent in itself. The head file (`head_file`, by default beside the
master key) holds the last audit entry's number and hash as
they were after the last change; a keystore whose audit log does not reach
that entry, or reaches it with another hash, is older than the head file or
another keystore. It is only worth as much as the attacker's inability to
write it: kept where only root writes (as /etc/mailseal), it catches a
rollback by anyone who can write only the keystore.

A process that cannot write it (the daemon under its own user) leaves it as
it was: a keystore that is ahead of its head file is fine.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import KeystoreError


@dataclass(frozen=True)
class Head:
    seq: int  # the last audit entry's number
    hash: str  # and its (keyed) hash


def read(path: Path) -> Head | None:
    """The head recorded in path; None if there is none yet."""
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        return Head(int(data["seq"]), str(data["hash"]))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeystoreError(f"cannot read the keystore head file {path}: {exc.strerror}") from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise KeystoreError(f"{path} is not a mailseal keystore head file") from None


def write(path: Path, head: Head) -> None:
    """Replace the head file atomically; mode 0640, group of its directory when run as root
    (so the daemon, in that group, can read what root's CLI wrote)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, 0, os.stat(path.parent).st_gid)
            os.fchmod(fd, 0o640)
            os.write(fd, json.dumps({"seq": head.seq, "hash": head.hash}).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise KeystoreError(f"cannot write the keystore head file {path}: {exc.strerror}") from None
