"""Keystore backup and restore: a consistent copy, sealed.

The copy is taken with SQLite's online backup API, so it is consistent even
while the daemon has the keystore open in WAL mode (committed changes still
in the -wal file are in it). It is sealed (ChaCha20-Poly1305, the header as
associated data) under the keystore's master key, or under a key derived
with Argon2id from a passphrase. Either way the private keys inside stay
sealed under the master key, as in the keystore itself: a backup is useless
without the master key, which is never in it and must be backed up on its own.

File layout: MAGIC line, one line of JSON (how it is sealed, Argon2id salt
and parameters, what it holds), then the sealed SQLite database image.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from . import masterkey
from .errors import KeystoreError, MasterKeyError

MAGIC = b"mailseal keystore backup v1\n"
MAX_HEADER = 4096
MASTER_KEY, PASSPHRASE = "master-key", "passphrase"


class BackupError(KeystoreError):
    pass


@dataclass(frozen=True)
class Summary:
    sealed_with: str
    created: int
    keys: int
    policies: int
    source: str


def snapshot(path: Path) -> tuple[bytes, dict]:
    """A consistent image of the live keystore, and its counts."""
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        mem = sqlite3.connect(":memory:")
        try:
            src.backup(mem)
        finally:
            src.close()
        meta = _describe(mem)
        image = bytearray(mem.serialize())
    except sqlite3.Error as exc:
        raise BackupError(f"keystore {path}: cannot copy: {exc}") from None
    # The file format's write/read versions (header bytes 18 and 19) say WAL:
    # an image that says so cannot be opened in memory. The rollback-journal
    # form (1) is the same database; `install` puts the copy back in WAL mode.
    image[18:20] = b"\x01\x01"
    return bytes(image), meta


def _describe(db: sqlite3.Connection) -> dict:
    if db.execute("PRAGMA user_version").fetchone()[0] == 0:
        raise BackupError("not a mailseal keystore")
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    if "master_key_check" not in meta:
        raise BackupError("a keystore without its master key check value (damaged)")
    return {"keys": db.execute("SELECT count(*) FROM keys").fetchone()[0],
            "policies": db.execute("SELECT count(*) FROM policies").fetchone()[0],
            "salt": meta.get("argon2id_salt"), "check": meta["master_key_check"], "keyed": "integrity" in meta}


def _passphrase_key(passphrase: str, salt: bytes) -> bytes:
    return Argon2id(salt=salt, length=masterkey.KEY_SIZE, **masterkey.ARGON2).derive(passphrase.encode())


def write(path: Path, keystore: Path, master: masterkey.MasterKey, passphrase: str | None = None,
          now: float | None = None) -> Summary:
    """Seal a snapshot of `keystore` into a new file `path` (mode 0600, never overwritten)."""
    image, meta = snapshot(keystore)
    header = {"sealed_with": PASSPHRASE if passphrase else MASTER_KEY, "created": int(now or time.time()),
              "source": str(keystore), "keys": meta["keys"], "policies": meta["policies"],
              # A passphrase-derived master key needs its salt before the image is open.
              "keystore_salt": base64.b64encode(meta["salt"]).decode() if meta["salt"] else None}
    if passphrase:
        salt = os.urandom(16)
        header["argon2id"] = {"salt": base64.b64encode(salt).decode(), **masterkey.ARGON2}
        sealer = masterkey.MasterKey(_passphrase_key(passphrase, salt))
    else:
        sealer = master
    head = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
    sealed = sealer.seal(image, head)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists; not overwriting it") from None
    except OSError as exc:
        raise BackupError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(head + sealed)
        handle.flush()
        os.fsync(handle.fileno())
    return Summary(header["sealed_with"], header["created"], meta["keys"], meta["policies"], str(keystore))


def read(path: Path, source: masterkey.Source, passphrase: str | None = None) -> tuple[bytes, Summary]:
    """Open a backup: the database image, checked to open with the configured master key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if not data.startswith(MAGIC) or end < 0:
        raise BackupError(f"{path} is not a mailseal keystore backup")
    try:
        header = json.loads(data[len(MAGIC):end])
        sealed_with = header["sealed_with"]
        keystore_salt = base64.b64decode(header["keystore_salt"]) if header.get("keystore_salt") else None
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"{path}: damaged backup header") from None
    head, sealed = data[: end + 1], data[end + 1:]
    if sealed_with == PASSPHRASE:
        if passphrase is None:
            raise BackupError(f"{path} is sealed with a passphrase: give --passphrase-file")
        try:
            salt = base64.b64decode(header["argon2id"]["salt"])
        except (KeyError, TypeError, ValueError):
            raise BackupError(f"{path}: damaged backup header") from None
        opener = masterkey.MasterKey(_passphrase_key(passphrase, salt))
        failure = "wrong passphrase, or the backup was altered"
    elif sealed_with == MASTER_KEY:
        if passphrase is not None:
            raise BackupError(f"{path} is sealed with the master key, not a passphrase: leave out --passphrase-file")
        opener = masterkey.MasterKey(masterkey.load(source, keystore_salt, creating=False))
        failure = f"{source.describe} does not open it (another keystore's master key?), or the backup was altered"
    else:
        raise BackupError(f"{path}: unknown sealing {sealed_with!r}")
    try:
        image = opener.open(sealed, head)
    except MasterKeyError:
        raise BackupError(f"{path}: {failure}") from None
    mem = sqlite3.connect(":memory:")
    try:
        mem.deserialize(image)
        meta = _describe(mem)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: the keystore inside is damaged ({exc})") from None
    finally:
        mem.close()
    # The private keys inside are sealed under the master key: check that
    # the configured one is it before anything is written.
    masterkey.MasterKey(masterkey.load(source, meta["salt"], creating=False)).verify(meta["check"], source,
                                                                                      keyed=meta["keyed"])
    return image, Summary(sealed_with, header.get("created", 0), meta["keys"], meta["policies"],
                          str(header.get("source", "?")))


def install(image: bytes, path: Path, *, force: bool = False) -> None:
    """Write the image as the keystore at `path`: a new file, or (force) over
    the existing one through SQLite, so its other users see one consistent change."""
    path = Path(path)
    exists = path.exists()
    if exists and not force:
        raise BackupError(f"keystore {path} exists; restore into a fresh directory, or give --force "
                          "to replace it")
    if not exists:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise BackupError(f"cannot create keystore {path}: {exc.strerror}") from None
        if os.geteuid() == 0:  # as `keys generate` does: the keystore belongs to the daemon's user
            parent = os.stat(path.parent)
            os.fchown(fd, parent.st_uid, parent.st_gid)
        os.close(fd)
    mem = sqlite3.connect(":memory:")
    try:
        mem.deserialize(image)
        dst = sqlite3.connect(path, timeout=5.0)
        try:
            mem.backup(dst)
            dst.execute("PRAGMA journal_mode = WAL")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        if not exists:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        raise BackupError(f"cannot write keystore {path}: {exc}") from None
    finally:
        mem.close()
