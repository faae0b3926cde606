"""The keystore: local identities, remote recipients, policies, audit log.

Owners are stored in canonical form (mailseal.addresses: domain in lower-case
IDNA ASCII, local part case-folded), whatever spelling a caller passes.
Lookup rules (mailseal.addresses.lookup_order), one place for all of them:
the exact canonical address, then the address without its `+tag`, then
`@domain`, then parent
domains when `parent_domains = true`. For sealing, the most specific owner
that has a usable (not revoked, not expired) key wins; for opening, every
identity of every matching owner is tried, rotated-out ones included.

Private keys are sealed with the master key (masterkey.py); the SQLite file
alone holds no usable secret. Keys, policies and the audit log are bound
together by MACs under a key derived from it (integrity.py): a change made
without the master key is detected (Tampered) and never used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import Conflict, KeystoreError, MasterKeyError, NotFound, StoreUnavailable, Tampered
from .fingerprint import fingerprint
from .masterkey import Source as MasterKeySource
from .masterkey import resolve as resolve_master_key
from .records import KeyRecord, parse_cards, render_card
from .sqlite import POLICIES, SQLiteKeyStore

if TYPE_CHECKING:
    from ..config import KeystoreConfig

__all__ = [
    "Conflict", "KeystoreError", "MasterKeyError", "NotFound", "StoreUnavailable", "Tampered", "fingerprint",
    "MasterKeySource", "KeyRecord", "parse_cards", "render_card", "POLICIES", "SQLiteKeyStore", "open_keystore",
]


def open_keystore(config: KeystoreConfig, *, create: bool = True, actor: str | None = None,
                  accept: bool = False) -> SQLiteKeyStore:
    """The keystore a configuration names (SQLite is the embedded default)."""
    source = resolve_master_key(config.master_key_file, config.passphrase_env)
    return SQLiteKeyStore(config.path, source, parent_domains=config.parent_domains, create=create, actor=actor,
                          head_file=config.head_file, accept=accept)
