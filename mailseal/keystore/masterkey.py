"""The master key that seals private keys at rest.

It comes from, in this order: a systemd credential
($CREDENTIALS_DIRECTORY/mailseal-master-key, read only, never created); the
configured master_key_file (created, mode 0600, only together with a new
keystore); or a passphrase in an environment variable, stretched with
Argon2id (salt and parameters kept in the keystore). A keystore remembers a
check value, so a wrong key is detected and reported, never used and never
replaced.

The key seals private keys directly (ChaCha20-Poly1305); the keystore's
integrity MACs use a separate key derived from it with HKDF-SHA256 under
their own label, so neither use can stand in for the other.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import MasterKeyError, Tampered

KEY_SIZE = 32
NONCE_SIZE = 12
CREDENTIAL_NAME = "mailseal-master-key"
ARGON2 = {"iterations": 3, "lanes": 4, "memory_cost": 65536}  # RFC 9106, 64 MiB
# v1: keystores whose integrity is not yet keyed; v2: keyed ones. A keyed
# keystore made to look unkeyed again (its integrity record deleted) is
# recognised by its v2 check value.
_CHECK_AAD = b"mailseal master key check v1"
_CHECK_AAD_KEYED = b"mailseal master key check v2"
_INTEGRITY_INFO = b"mailseal keystore integrity v1"
_VERSION = b"\x01"


@dataclass(frozen=True)
class Source:
    """Where the master key comes from; `describe` names it in messages."""

    file: Path | None = None
    credential: Path | None = None
    passphrase_env: str | None = None

    @property
    def describe(self) -> str:
        if self.credential:
            return f"systemd credential {self.credential}"
        if self.file:
            return f"master key file {self.file}"
        return f"passphrase in ${self.passphrase_env}"


def resolve(master_key_file: Path | None, passphrase_env: str | None) -> Source:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        return Source(credential=Path(credentials) / CREDENTIAL_NAME)
    if passphrase_env:
        return Source(passphrase_env=passphrase_env)
    return Source(file=master_key_file)


def _read_file(path: Path) -> bytes:
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        raise MasterKeyError(f"master key {path} is missing; restore it from backup "
                             "(mailseal never makes a new one for an existing keystore)") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot read master key {path}: {exc.strerror}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_SIZE:
        raise MasterKeyError(f"{path} is not a mailseal master key (expected 32 bytes, base64)")
    return key


def create_file(path: Path) -> bytes:
    """Write a new random key, mode 0600, refusing to overwrite anything."""
    key = os.urandom(KEY_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MasterKeyError(f"{path} already exists") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot create master key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key) + b"\n")
    return key


def from_passphrase(env: str, salt: bytes) -> bytes:
    passphrase = os.environ.get(env)
    if not passphrase:
        raise MasterKeyError(f"the keystore passphrase variable ${env} is not set")
    return Argon2id(salt=salt, length=KEY_SIZE, **ARGON2).derive(passphrase.encode())


def load(source: Source, salt: bytes | None, creating: bool) -> bytes:
    """The master key; salt is the keystore's Argon2id salt (None: not passphrase-made)."""
    if source.passphrase_env:
        if salt is None:
            raise MasterKeyError("this keystore was made with a master key file, not a passphrase: "
                                 "set master_key_file instead of passphrase_env in [keystore]")
        return from_passphrase(source.passphrase_env, salt)
    if salt is not None:
        raise MasterKeyError(f"this keystore was made with a passphrase, but {source.describe} is "
                             "configured: set passphrase_env instead of master_key_file in [keystore]")
    if source.credential:
        return _read_file(source.credential)
    if source.file is None:
        raise MasterKeyError("no master key configured: set master_key_file or passphrase_env in [keystore]")
    if creating and not source.file.exists():
        return create_file(source.file)
    return _read_file(source.file)


class MasterKey:
    """Seals and opens secrets, each bound to its context by the AAD."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.integrity_key = HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=_INTEGRITY_INFO).derive(key)

    def __repr__(self) -> str:
        return "MasterKey(…)"

    def seal(self, secret: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret, context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        if blob[:1] != _VERSION:
            raise MasterKeyError("sealed secret has an unknown format")
        try:
            return self._aead.decrypt(blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], context)
        except InvalidTag:
            raise MasterKeyError("a sealed private key does not open with this master key "
                                 "(wrong key, or the row was altered)") from None

    def check_value(self) -> bytes:
        """The check value of a keystore whose integrity is keyed."""
        return self.seal(b"", _CHECK_AAD_KEYED)

    def _opens(self, check: bytes, aad: bytes) -> bool:
        try:
            self.open(check, aad)
        except MasterKeyError:
            return False
        return True

    def verify(self, check: bytes, source: Source, *, keyed: bool) -> None:
        """Is this the keystore's key? keyed: the keystore has an integrity record."""
        if self._opens(check, _CHECK_AAD_KEYED if keyed else _CHECK_AAD):
            return
        if self._opens(check, _CHECK_AAD if keyed else _CHECK_AAD_KEYED):
            raise Tampered("its integrity record was deleted" if not keyed else
                           "its master key check value was replaced by an older one")
        raise MasterKeyError(f"wrong master key: {source.describe} is not the key this "
                             "keystore was created with")
