"""Benchmark: the cost of sender signatures per message (FORMAT.md section 2.3).

Not a test. In-process medians: the signature alone (Ed25519 + ML-DSA-65
composite, and Ed25519 only) over a realistic signed content, its
verification, and bundle.seal / bundle.open_sealed at 1 KB and 100 KB with
and without signing (one PQ recipient, as the gateway seals). Writes
bench/results/signing.json.

    .venv/bin/python bench/signing.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailseal import age, bundle, signing  # noqa: E402


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke check)")
    runs = 30 if parser.parse_args().quick else 200
    identity = age.generate()
    recipient = identity.recipient()
    out: dict = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                            f"Python {platform.python_version()}", "runs": runs, "ms": {}}
    content = os.urandom(2600)  # about what a one-recipient PQ signed content weighs
    for kind in signing.KINDS:
        key = signing.generate(kind)
        sig = key.sign(content)
        public = key.public()
        out["ms"][f"sign {kind}"] = median_ms(lambda: key.sign(content), runs)
        out["ms"][f"verify {kind}"] = median_ms(lambda: public.verify(content, sig), runs)
    key = signing.generate()
    for label, size in (("1KB", 1_000), ("100KB", 100_000)):
        message = b"From: a@a.test\r\nTo: b@b.test\r\n\r\n" + os.urandom(size // 2).hex().encode()[:size]
        for mode, signer in (("unsigned", None), ("signed", ("a.test", key))):
            sealed = bundle.seal(message, [recipient], bind=["b@b.test"], signer=signer)
            out["ms"][f"seal {label} {mode}"] = median_ms(
                lambda: bundle.seal(message, [recipient], bind=["b@b.test"], signer=signer), runs)

            def open_and_check(sealed=sealed):
                opened = bundle.open_sealed(sealed, [identity], "b@b.test")
                if opened.signature is not None and opened.signature.check([key.public()]) != bundle.SIGNED:
                    raise RuntimeError("the benchmark's own signature does not verify")
            out["ms"][f"open {label} {mode}"] = median_ms(open_and_check, runs)
    print(out["machine"])
    for name, ms in out["ms"].items():
        print(f"{name:<32} {ms:8.3f} ms")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "signing.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
