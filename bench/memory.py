"""Benchmark: peak memory of the gateway process for large mail.

Not a test. Targets (issue: bounded memory for large mail): one 50 MB
message through the gateway takes at most 4x its size in peak RSS, outbound
(sealing) and inbound (opening); ten concurrent 10 MB messages keep the
process under 1 GB. The reference in the same run is the pass-through proxy
of bench/passthrough.py on the same messages. Each figure is the process's
VmHWM after the run, from a fresh process.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway as gw  # noqa: E402  (bench/gateway.py: shared helpers)

from mailseal import age, bundle  # noqa: E402
from mailseal.keystore import parse_cards  # noqa: E402


def main() -> int:
    import argparse
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="accepted for make bench; the runs are the same")
    parser.parse_args()
    import shutil
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="mailseal-membench-"))
    env = {**os.environ, "PYTHONPATH": str(gw.ROOT)}
    sink_port = gw.free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gw.wait_port(sink_port)
        run = gw.Run(work, sink_port)
        b_cfg = gw.mailseal_config(work / "b", outbound=None, inbound={
            "listen": f"127.0.0.1:{gw.free_port()}", "next_hop": f"127.0.0.1:{sink_port}"}, workers=1)
        gw.ms(b_cfg, "keys", "generate", "@b.test")
        card = gw.ms(b_cfg, "keys", "export", "@b.test")
        key = parse_cards(card)[0].recipient
        a_cfg = gw.mailseal_config(work / "a", outbound={
            "listen": f"127.0.0.1:{gw.free_port()}", "next_hop": f"127.0.0.1:{sink_port}"}, inbound=None, workers=1)
        gw.ms(a_cfg, "keys", "import", "bob@b.test", str(key))

        big = gw.message(50_000_000, ["bob@b.test"])
        (work / "big.eml").write_bytes(big.replace(b"\r\n", b"\n"))
        gw.driver.write_jobs(work / "big-sealed.jobs", [("bob@b.test", bundle.seal(big, [key], bind=["bob@b.test"],
                                                                             eol=b"\r\n"))])
        ten = gw.message(10_000_000, ["bob@b.test"])
        (work / "ten.eml").write_bytes(ten.replace(b"\r\n", b"\n"))

        def one(target, path, *, sessions=1, count=1):
            gw.SESSIONS = sessions
            return gw.measure(target, lambda port: run.source(port, path, count, to="bob@b.test"),
                              sink_port, env)

        rows = {
            "50MB outbound, baseline proxy": (one("baseline", work / "big.eml"), len(big)),
            "50MB outbound, sealing": (one(a_cfg, work / "big.eml"), len(big)),
            "50MB inbound, opening": (gw.measure(b_cfg, lambda port: run.drive_sessions(port, work / "big-sealed.jobs", 1),
                                                 sink_port, env), len(big)),
            "10 x 10MB concurrent, baseline proxy": (one("baseline", work / "ten.eml", sessions=10, count=10), None),
            "10 x 10MB concurrent, sealing": (one(a_cfg, work / "ten.eml", sessions=10, count=10), None),
        }
        print(f"{'run':<40} {'peak RSS MB':>12} {'x message size':>15} {'seconds':>8}")
        out = {"machine": gw.machine(), "runs": {}}
        for name, (sample, size) in rows.items():
            ratio = f"{sample['peak'] / size:.2f}" if size else "-"
            print(f"{name:<40} {sample['peak'] / 1e6:12.0f} {ratio:>15} {sample['seconds']:8.2f}")
            out["runs"][name] = {"peak_rss_mb": sample["peak"] / 1e6, "message_bytes": size,
                                 "seconds": sample["seconds"]}
        (gw.ROOT / "bench" / "results").mkdir(exist_ok=True)
        (gw.ROOT / "bench" / "results" / "memory.json").write_text(json.dumps(out, indent=2))
        print(f"machine: {out['machine']}")
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
