"""Benchmark: keystore lookups against 100,000 recipients (SQLite file).

Not a test. Prints the median cost of one lookup for: an exact hit, a
`+tag` hit, a domain fallback, a miss, and a policy lookup, through the
daemon's result cache and without it; target: under 50 microseconds, so key
lookup never shows in the mail path. The reference in the same run is one
bare primary-key SELECT on the same connection.

    .venv/bin/python bench/keystore_lookup.py [--keys N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailseal import age  # noqa: E402
from mailseal.addresses import parse_address  # noqa: E402
from mailseal.age import bech32  # noqa: E402
from mailseal.keystore import MasterKeySource, SQLiteKeyStore  # noqa: E402


def per_call_us(fn, args_list, rounds: int = 7) -> float:
    """Median over rounds of the mean time of one call, in microseconds."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for args in args_list:
            fn(args)
        results.append((time.perf_counter_ns() - start) / len(args_list) / 1000)
    return statistics.median(results)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 keys (a smoke check)")
    args = parser.parse_args()
    if args.quick:
        args.keys = 10_000
    work = Path(tempfile.mkdtemp(prefix="mailseal-ksbench-"))
    store = SQLiteKeyStore(work / "ks.sqlite3", MasterKeySource(file=work / "master.key"), actor="bench")
    domains = [f"d{i}.test" for i in range(1000)]
    start = time.perf_counter()
    batch = []
    for i in range(args.keys):
        # Any 32 bytes are a valid X25519 public key; a post-quantum key every 100th.
        recipient = (age.generate().recipient() if i % 100 == 0
                     else age.parse_recipient(bech32.encode("age", os.urandom(32))))
        batch.append((f"user{i}@{domains[i % 1000]}", recipient))
        if len(batch) == 10_000 or i == args.keys - 1:
            store.import_many([(owner, r, None) for owner, r in batch], source="bench")
            batch = []
    for d in domains[:500]:
        store.import_recipient("@" + d, age.parse_recipient(bech32.encode("age", os.urandom(32))))
        store.set_policy("@" + d, "require")
    fill = time.perf_counter() - start
    rng = random.Random(1)
    n = 2000
    hits = []
    for _ in range(n):
        i = rng.randrange(args.keys)
        hits.append(parse_address(f"user{i}@{domains[i % 1000]}"))
    tagged = [parse_address(f"{a.local}+news@{a.domain}") for a in hits]
    fallback = [parse_address(f"nobody{k}@{domains[k % 500]}") for k in range(n)]
    misses = [parse_address(f"nobody{k}@{domains[500 + k % 500]}") for k in range(n)]
    ids = [(rng.randrange(1, args.keys),) for _ in range(n)]
    db = store._db
    results = {
        "reference: SELECT by primary key": per_call_us(
            lambda a: db.execute("SELECT recipient FROM keys WHERE id = ?", a).fetchone(), ids),
        "recipients_for: exact address": per_call_us(store.recipients_for, hits),
        "recipients_for: +tag address": per_call_us(store.recipients_for, tagged),
        "recipients_for: domain fallback": per_call_us(store.recipients_for, fallback),
        "recipients_for: no key (miss)": per_call_us(store.recipients_for, misses),
        "policy_for": per_call_us(store.policy_for, hits),
        # The same lookups without the daemon's result cache (a first sight).
        "uncached recipients_for: exact": per_call_us(store._recipients_for, hits),
        "uncached recipients_for: domain fallback": per_call_us(store._recipients_for, fallback),
        "uncached recipients_for: miss": per_call_us(store._recipients_for, misses),
        "uncached policy_for": per_call_us(store._policy_for, hits),
    }
    assert all(store.recipients_for(a) for a in hits[:50]) and not store.recipients_for(misses[0])
    machine = f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"keystore with {args.keys} recipients (+500 domain keys), filled in {fill:.1f} s; {machine}")
    for name, us in results.items():
        print(f"  {name:<36} {us:7.1f} us   {1e6 / us:10.0f} lookups/s")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "keystore_lookup.json").write_text(json.dumps({"machine": machine, "keys": args.keys,
                                                          "microseconds": results}, indent=2))
    store.close()
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
