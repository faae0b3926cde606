"""Keystore failures; each message is one line an administrator can act on."""


class KeystoreError(Exception):
    """Base class of every keystore failure."""


class MasterKeyError(KeystoreError):
    """The master key is missing, unreadable, or not the one the keystore was made with."""


class StoreUnavailable(KeystoreError):
    """The database cannot be used: locked, corrupt, unreadable, or from a newer mailseal."""


class NotFound(KeystoreError):
    """No key or policy matches what was named."""


class Conflict(KeystoreError):
    """The change would duplicate or contradict what is stored."""


class Tampered(KeystoreError):
    """The keystore was changed without the master key (its keyed integrity does not verify).

    Raised first with what is wrong (detail); the keystore adds its path.
    """

    def __init__(self, detail: str, path: object = None) -> None:
        self.detail, self.path = detail, path
        super().__init__(detail if path is None else f"keystore {path} was changed without the master key: {detail}")
