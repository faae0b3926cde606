"""Benchmark: `mailseal seal` / `mailseal open` against Go `age` on the same data.

Not a test: it prints figures (medians over several runs; the machines are
shared and noisy) and writes bench/results/seal_open.json. Each run is a
fresh process reading a file on stdin and writing a file, for mailseal and
age alike; peak memory is the process's maximum resident set (wait4).
The in-process columns time the library calls alone (no interpreter start).

    .venv/bin/python bench/seal_open.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailseal import age, bundle  # noqa: E402

SIZES = {"1KB": 1_000, "100KB": 100_000, "10MB": 10_000_000, "50MB": 50_000_000}
RUNS = {"1KB": 15, "100KB": 15, "10MB": 7, "50MB": 5}


def make_message(size: int) -> bytes:
    head = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    tail = b"--x--\r\n"
    raw = os.urandom(max(0, (size - len(head) - len(tail)) * 57 // 78))
    body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    msg = head + body + tail
    return msg[: max(size, len(head) + len(tail))] if len(msg) > size else msg + b"x" * (size - len(msg))


TIME_BIN = shutil.which("time") or "/usr/bin/time"


def run_process(cmd: list[str], stdin_path: Path, stdout_path: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one process.

    Peak memory comes from GNU time, whose child is forked from a small
    process: ru_maxrss of a child forked from this (large) Python process
    would count the parent's memory at fork time.
    """
    with tempfile.NamedTemporaryFile("r") as report, open(stdin_path, "rb") as fin, \
            open(stdout_path, "wb") as fout:
        start = time.perf_counter()
        proc = subprocess.run([TIME_BIN, "-o", report.name, "-f", "%M", *cmd], stdin=fin, stdout=fout,
                              stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode()}")
        peak_kb = int(report.read().split()[-1])
    return elapsed, peak_kb * 1024


def median_run(cmd, stdin_path, stdout_path, runs) -> dict:
    times, peaks = [], []
    for _ in range(runs):
        t, peak = run_process(cmd, stdin_path, stdout_path)
        times.append(t)
        peaks.append(peak)
    return {"seconds": statistics.median(times), "peak_rss": max(peaks)}


def median_call(fn, args, runs) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke check)")
    args = parser.parse_args()
    age_bin = shutil.which("age")
    if age_bin is None:
        print("bench: Debian package 'age' is missing (make bench installs it)", file=sys.stderr)
        return 2
    mailseal = [sys.executable, "-m", "mailseal"]
    work = Path(tempfile.mkdtemp(prefix="mailseal-bench-"))
    results = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}, age {subprocess.run([age_bin, '--version'], capture_output=True, text=True).stdout.strip()}",
               "sizes": {}}
    try:
        classic = age.generate(classic=True)
        pq = age.generate()
        key = work / "classic.key"
        key.write_text(age.identity_file(classic))
        pq_key = work / "pq.key"
        pq_key.write_text(age.identity_file(pq))
        for label, size in SIZES.items():
            runs = 3 if args.quick else RUNS[label]
            msg_path = work / "msg.eml"
            message = make_message(size)
            msg_path.write_bytes(message)
            out = work / "out"
            row: dict = {"bytes": len(message)}
            row["age_encrypt"] = median_run([age_bin, "-r", str(classic.recipient())], msg_path, out, runs)
            shutil.copy(out, work / "file.age")
            row["age_decrypt"] = median_run([age_bin, "-d", "-i", str(key)], work / "file.age", out, runs)
            row["seal_x25519"] = median_run([*mailseal, "seal", "-r", str(classic.recipient())], msg_path, out, runs)
            shutil.copy(out, work / "sealed.eml")
            row["open_x25519"] = median_run([*mailseal, "open", "-i", str(key)], work / "sealed.eml", out, runs)
            assert out.read_bytes() == message
            row["seal_pq"] = median_run([*mailseal, "seal", "-r", str(pq.recipient())], msg_path, out, runs)
            shutil.copy(out, work / "sealed_pq.eml")
            row["open_pq"] = median_run([*mailseal, "open", "-i", str(pq_key)], work / "sealed_pq.eml", out, runs)
            sealed_pq = (work / "sealed_pq.eml").read_bytes()
            row["inproc_seal_pq_s"] = median_call(bundle.seal, (message, [pq.recipient()]), runs)
            row["inproc_open_pq_s"] = median_call(bundle.open_sealed, (sealed_pq, [pq]), runs)
            results["sizes"][label] = row
            print_row(label, row)
    finally:
        shutil.rmtree(work)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "seal_open.json").write_text(json.dumps(results, indent=2))
    print(f"\nmachine: {results['machine']}\nwritten: bench/results/seal_open.json")
    return 0


def print_row(label: str, row: dict) -> None:
    mb = row["bytes"] / 1e6
    if label == "1KB":
        print(f"{'size':>6} {'op':<14} {'MB/s':>8} {'ms':>9} {'peak MB':>8} {'peak/size':>9} {'vs age':>7}")
    for op, ref in (("age_encrypt", None), ("seal_x25519", "age_encrypt"), ("seal_pq", "age_encrypt"),
                    ("age_decrypt", None), ("open_x25519", "age_decrypt"), ("open_pq", "age_decrypt")):
        r = row[op]
        ratio = f"{row[ref]['seconds'] / r['seconds']:.2f}x" if ref else "ref"
        print(f"{label:>6} {op:<14} {mb / r['seconds']:8.1f} {r['seconds'] * 1000:9.1f} "
              f"{r['peak_rss'] / 1e6:8.1f} {r['peak_rss'] / row['bytes']:9.2f} {ratio:>7}")
    print(f"{label:>6} in-process: seal_pq {mb / row['inproc_seal_pq_s']:.1f} MB/s, "
          f"open_pq {mb / row['inproc_open_pq_s']:.1f} MB/s")


if __name__ == "__main__":
    sys.exit(main())
