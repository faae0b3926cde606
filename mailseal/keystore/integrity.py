"""What an edit of the keystore file without the master key cannot fake.

Everything here is keyed with HMAC-SHA256 under a key derived from the
master key (HKDF, its own label: masterkey.MasterKey.integrity_key), each
use with its own label:

* every row of `keys`, `policies` and `inbound_policies` carries `mac`, an HMAC of the row's
  canonical form (every column, its id or owner included), so an edited,
  added or moved row is named;
* the audit log is an HMAC chain (audit.py);
* one record in `meta` binds the whole: the last audit entry's number and
  hash (the head), and per table the number of rows and the sum,
  modulo 2**256, of a secret per-row value derived from the row's mac
  (MSet-Add-Hash, Clarke et al. 2003). A deleted row, or a row put back as
  it was before a later change, leaves the sum wrong; a change through the
  keystore updates it in constant time (take the old row's share, add the
  new one's). One HMAC-SHA512 of the row gives both: the first half is the
  mac stored in the row, the second its share, never stored.

The record itself carries an HMAC, so it cannot be rewritten to match.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Tampered

MODULUS = 2**256
TABLES = ("keys", "policies", "inbound_policies")
KEY_COLUMN = {"keys": "id", "policies": "owner", "inbound_policies": "owner"}
ROWS = {"keys": "key rows", "policies": "policies", "inbound_policies": "inbound policies"}


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _bytes(value: object) -> dict:
    if isinstance(value, bytes):  # a BLOB (SQLite lets any column hold one)
        return {"hex": value.hex()}
    raise TypeError(f"cannot serialise {type(value).__name__}")


# A row's values, canonically: a JSON array, BLOBs as {"hex": …}.
_encode_values = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=_bytes).encode


class Keyed:
    """The keyed functions; one instance per master key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._layouts: dict[tuple[str, tuple[str, ...]], tuple[bytes, Callable]] = {}

    def __repr__(self) -> str:
        return "Keyed(…)"

    def _mac(self, label: bytes, data: bytes) -> bytes:
        return hmac.digest(self._key, label + b"\x00" + data, "sha256")

    def _layout(self, table: str, names: tuple[str, ...]) -> tuple[bytes, Callable]:
        """(the label naming the table and its columns, what picks the values in
        that order), once per query shape."""
        layout = self._layouts.get((table, names))
        if layout is None:
            order = sorted((i for i, n in enumerate(names) if n != "mac"), key=names.__getitem__)
            label = b"row\x00" + _json([table, [names[i] for i in order]]) + b"\x00"
            layout = self._layouts[(table, names)] = (label, lambda values: [values[i] for i in order])
        return layout

    def row(self, table: str, names: tuple[str, ...], values: tuple) -> tuple[str, int]:
        """(mac, share) of one row: every column but `mac`, by name, in a fixed order.

        The mac is stored in the row; the share (its part of the table's sum) is
        secret: it cannot be told from the mac without the key."""
        label, pick = self._layout(table, names)
        digest = hmac.digest(self._key, label + _encode_values(pick(values)).encode(), "sha512")
        return digest[:32].hex(), int.from_bytes(digest[32:], "big")

    def entry(self, prev: str, body: bytes) -> str:
        return self._mac(b"audit", prev.encode() + b"\n" + body).hex()

    def record(self, body: bytes) -> str:
        return self._mac(b"record", body).hex()


@dataclass
class Tally:
    """Rows of one table: how many, and the sum of their shares."""

    count: int = 0
    total: int = 0

    def add(self, share: int) -> None:
        self.count += 1
        self.total = (self.total + share) % MODULUS

    def remove(self, share: int) -> None:
        self.count -= 1
        self.total = (self.total - share) % MODULUS


@dataclass
class Record:
    """The keyed summary kept in meta under `integrity`."""

    audit_seq: int = 0  # the last audit entry's number
    audit_head: str = ""
    tallies: dict[str, Tally] = field(default_factory=lambda: {t: Tally() for t in TABLES})

    def appended(self, digest: str) -> None:
        """An audit entry with this hash was added at the end."""
        self.audit_seq += 1
        self.audit_head = digest

    def dump(self, keyed: Keyed) -> str:
        body = {"version": 1, "audit": [self.audit_seq, self.audit_head],
                **{t: [self.tallies[t].count, f"{self.tallies[t].total:064x}"] for t in TABLES}}
        return json.dumps({**body, "mac": keyed.record(_json(body))}, sort_keys=True)

    @classmethod
    def load(cls, text: str | bytes | None, keyed: Keyed) -> Record:
        if text is None:
            raise Tampered("its integrity record is missing")
        try:
            data = json.loads(text)
            mac = data.pop("mac")
            good = hmac.compare_digest(str(mac), keyed.record(_json(data)))
            if good:
                count, head = data["audit"]
                tallies = {t: Tally(int(data[t][0]), int(data[t][1], 16)) for t in TABLES}
                return cls(int(count), str(head), tallies)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
        raise Tampered("its integrity record was altered")


def describe_row(table: str, row: dict) -> str:
    if table == "keys":
        return f"key {row.get('id')} of {row.get('owner')} ({row.get('fingerprint')})"
    return f"{'inbound ' if table == 'inbound_policies' else ''}policy for {row.get('owner')}"


def check_rows(keyed: Keyed, record: Record, table: str, names: tuple[str, ...], rows: list[tuple]) -> None:
    """Every row's mac, then the table's tally: raises Tampered naming the first problem."""
    mac_at = names.index("mac")
    tally = Tally()
    for values in rows:
        mac, share = keyed.row(table, names, values)
        if values[mac_at] != mac:  # nothing secret to leak by timing: the right mac is no secret to whoever can read it
            raise Tampered(f"{describe_row(table, dict(zip(names, values)))} was added or changed")
        tally.add(share)
    expected = record.tallies[table]
    if tally != expected:
        what = ROWS[table]
        if tally.count < expected.count:
            raise Tampered(f"{expected.count - tally.count} of its {what} were deleted")
        raise Tampered(f"its {what} do not match its record (rows put back from an older copy)")


def check_audit_tail(record: Record, last_seq: int, last_hash: str | None) -> None:
    """The audit log still ends where the record says (a deleted tail is seen here)."""
    if last_seq != record.audit_seq:
        what = "deleted" if last_seq < record.audit_seq else "added"
        raise Tampered(f"its audit log ends at entry {last_seq} where its record says {record.audit_seq}: "
                       f"entries were {what}")
    if (last_hash or "") != record.audit_head:
        raise Tampered("its audit log does not end where mailseal left it")
