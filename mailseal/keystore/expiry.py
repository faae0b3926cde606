"""Keys in use that expire soon, or have: what `keys list`, `check-config`
and the daemon's daily log line warn about.

A key is in use while it is neither revoked nor retired: a remote key seals
mail to (or verifies mail from) a partner, a local one opens (or signs) our
own. Warnings start `[keystore] expiry_warning` (default 14 days) before.
"""

from __future__ import annotations

import math
import time

from .records import LOCAL, KeyRecord, family

DAY = 86400


def _use(record: KeyRecord) -> str:
    signing = family(record.kind) == "signing"
    if record.scope == LOCAL:
        return "signing key" if signing else "key that opens mail"
    return "key that verifies mail" if signing else "key that mail is sealed to"


def warnings(records: list[KeyRecord], now: float, warn_before: int) -> list[str]:
    """One line per key in use that expires within warn_before seconds (or has)."""
    out = []
    for r in records:
        if r.revoked is not None or r.retired is not None or r.expires is None or r.expires - now > warn_before:
            continue
        date = time.strftime("%Y-%m-%d", time.gmtime(r.expires))
        what = f"{r.owner}'s {_use(r)} ({r.fingerprint})"
        if r.expires <= now:
            fix = (f"`mailseal keys generate {r.owner}` and send partners the new card" if r.scope == LOCAL
                   else f"import a new key from {r.owner}")
            out.append(f"{what} expired on {date}: {fix}")
        else:
            days = math.ceil((r.expires - now) / DAY)
            fix = (f"`mailseal keys rotate {r.owner}` and send partners the new card" if r.scope == LOCAL
                   else f"ask {r.owner} for a new key")
            out.append(f"{what} expires on {date}, in {days} day{'s' if days != 1 else ''}: {fix}")
    return out
