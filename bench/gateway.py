"""Benchmark: the gateway under Postfix's smtp-source, into Postfix's smtp-sink.

Not a test. For 1 KB, 100 KB and 10 MB messages, 10 concurrent sessions,
the same messages through, in the same run:

  ceiling     smtp-source -> smtp-sink
  baseline    smtp-source -> bench/passthrough.py (aiosmtpd + smtplib) -> smtp-sink
  plain       smtp-source -> mailseal outbound, policy plain -> smtp-sink
  seal-1      ... sealing to one post-quantum recipient
  seal-5      ... sealing to five post-quantum recipients (one copy, five stanzas)
  seal-N      bench/drive.py -> mailseal outbound, sealing to one recipient, a
              new address every message (found through the @b.test domain
              key): the like-for-like reference for open
  open        bench/drive.py -> mailseal inbound, opening: every message is
              its own bundle bound to its own new recipient (so the replay
              cache sees no repeats and the binding holds) -> smtp-sink
  seal-1s     seal-1, signed with the sender domain's hybrid signing key
              (Ed25519 + ML-DSA-65)
  open-s      open, of bundles signed by a.test, verified against its key
  seal-smime  seal-1 for a partner without mailseal: an S/MIME copy (RSA-2048)
  seal-pgp    seal-1 for a partner without mailseal: a PGP/MIME copy (Curve25519)
  open-smime  bench/drive.py -> mailseal inbound, opening S/MIME for a local
              user whose PKCS#12 key it holds (no replay cache: no serial)
  open-pgp    the same for PGP/MIME and a local OpenPGP secret key

seal-N and open take bench/drive.py, a driver like smtp-source -d -s 10 that
sends a different recipient and message in every transaction, which
smtp-source cannot.

Prints messages/s, MB/s, CPU ms per message and peak RSS of the proxy
process, ratios against the baseline; writes bench/results/gateway.json and
bench/results/gateway.png. Medians over --repeat runs.

    .venv/bin/python bench/gateway.py [--quick] [--repeat N] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailseal import age, bundle, openpgp, signing, smime  # noqa: E402
from mailseal.keystore import parse_cards  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import drive as driver  # noqa: E402

SIZES = {"1KB": 1_000, "100KB": 100_000, "10MB": 10_000_000}
COUNTS = {"1KB": 4000, "100KB": 1000, "10MB": 40}
SESSIONS = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port}")


def message(size: int, to: list[str]) -> bytes:
    head = (f"From: alice@a.test\r\nTo: {', '.join(to)}\r\nSubject: bench\r\n"
            f"Message-ID: <bench@a.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrstuvwxyz.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)] + b"\r\n"
    return head + body


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def family(pid: int) -> list[int]:
    """The process and its children (workers)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = Path(f"/proc/{pid}/task/{task.name}/children")
        if children.exists():
            out += [int(c) for c in children.read_text().split()]
    return out


class Run:
    def __init__(self, work: Path, sink_port: int) -> None:
        self.work, self.sink_port = work, sink_port

    def drive(self, port: int, jobs: Path) -> float:
        """bench/drive.py with SESSIONS sessions over a job file."""
        return self.drive_sessions(port, jobs, SESSIONS)

    def drive_sessions(self, port: int, jobs: Path, sessions: int) -> float:
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "drive.py"), str(port), str(sessions), str(jobs)],
                             check=True, capture_output=True, text=True, timeout=1800)
        return float(out.stdout)

    def source(self, port: int, msg_file: Path, count: int, *, to: str, rcpts: int = 1) -> float:
        cmd = ["smtp-source", "-d", "-s", str(SESSIONS), "-m", str(count), "-F", str(msg_file),
               "-f", "alice@a.test", "-t", to, "-M", "client.a.test"]
        if rcpts > 1:
            cmd += ["-r", str(rcpts)]
        start = time.perf_counter()
        subprocess.run([*cmd, f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL, timeout=1800)
        return time.perf_counter() - start


def mailseal_config(directory: Path, *, outbound: dict | None, inbound: dict | None, workers: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[keystore]", 'path = "state/keystore.sqlite3"', "", "[server]", 'state_dir = "state"',
             'max_message_size = "60MB"']
    if workers > 1:
        lines.append(f"workers = {workers}")
    for name, section in (("outbound", outbound), ("inbound", inbound)):
        if section:
            lines += ["", f"[{name}]"] + [f'{k} = "{v}"' for k, v in section.items()]
    path = directory / "mailseal.toml"
    path.write_text("\n".join(lines) + "\n")
    ms(path, "keys", "init")  # serve never creates a keystore
    return path


def ms(config: Path, *args: str, input: str | None = None) -> str:
    return subprocess.run([sys.executable, "-m", "mailseal", "-c", str(config), *args], input=input,
                          capture_output=True, text=True, check=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--partners", action="store_true",
                        help="also the S/MIME and PGP/MIME rows (not yet validated: seal-pgp fails)")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    for tool in ("smtp-source", "smtp-sink"):
        if not shutil.which(tool):
            print(f"bench: {tool} missing (Debian package postfix; make bench installs it)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="mailseal-gwbench-"))
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        sink_port = free_port()
        sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-m", "1000", f"127.0.0.1:{sink_port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        wait_port(sink_port)
        run = Run(work, sink_port)

        # Keys: B's identities; A knows their public keys.
        b_cfg = mailseal_config(work / "b", outbound=None, inbound={
            "listen": f"127.0.0.1:{free_port()}", "next_hop": f"127.0.0.1:{sink_port}"}, workers=args.workers)
        ms(b_cfg, "keys", "generate", "@b.test")
        domain_card = ms(b_cfg, "keys", "export", "@b.test")
        recipients = [f"{i}bob@b.test" for i in range(1, 6)]
        plain_cfg = mailseal_config(work / "plain", outbound={
            "listen": f"127.0.0.1:{free_port()}", "next_hop": f"127.0.0.1:{sink_port}",
            "default_policy": "plain"}, inbound=None, workers=args.workers)
        seal_cfg = mailseal_config(work / "seal", outbound={
            "listen": f"127.0.0.1:{free_port()}", "next_hop": f"127.0.0.1:{sink_port}"}, inbound=None,
            workers=args.workers)
        ms(seal_cfg, "keys", "import", "bob@b.test", str(age.generate().recipient()))
        ms(seal_cfg, "keys", "import", "@b.test", str(age.generate().recipient()))
        for r in recipients:
            ms(seal_cfg, "keys", "import", r, str(age.generate().recipient()))
        domain_key = parse_cards(domain_card)[0].recipient
        # Signing: A's outbound has a local signing key for a.test; B knows
        # the public half of the key that signed open-s's bundles.
        sign_cfg = mailseal_config(work / "sign", outbound={
            "listen": f"127.0.0.1:{free_port()}", "next_hop": f"127.0.0.1:{sink_port}"}, inbound=None,
            workers=args.workers)
        ms(sign_cfg, "keys", "import", "bob@b.test", str(age.generate().recipient()))
        ms(sign_cfg, "keys", "generate", "@a.test")
        a_signer = signing.generate()
        (work / "a.sign").write_text(str(a_signer.public()) + "\n")
        ms(b_cfg, "keys", "import", "@a.test", str(work / "a.sign"))

        # Partners without mailseal: A holds an S/MIME and an OpenPGP
        # certificate; B holds the matching secret keys for its own users.
        smime_key, pgp_key = partner_keys(work)
        ms(seal_cfg, "keys", "import", "smime@c.test", str(work / "smime.pem"))
        ms(seal_cfg, "keys", "import", "pgp@d.test", str(work / "pgp.asc"))
        ms(b_cfg, "keys", "import-secret", "smime@b.test", str(work / "smime.p12"))
        ms(b_cfg, "keys", "import-secret", "pgp@b.test", str(work / "pgp.key"))

        results: dict = {"machine": machine(), "sessions": SESSIONS, "workers": args.workers, "sizes": {}}
        for label in args.sizes.split(","):
            size = SIZES[label]
            count = max(SESSIONS, COUNTS[label] // (10 if args.quick else 1))
            files = {}
            for name, to in (("one", ["bob@b.test"]), ("five", recipients)):
                files[name] = work / f"{label}-{name}.eml"
                files[name].write_bytes(message(size, to).replace(b"\r\n", b"\n"))
            # seal-N and open: a new recipient every message; open's bundles
            # are each bound to theirs, as a sending gateway binds them.
            one = message(size, ["bob@b.test"])
            rcpts = [f"{i}bob@b.test" for i in range(1, count + 1)]
            files["seal-N"], files["open"] = work / f"{label}-seal-N.jobs", work / f"{label}-open.jobs"
            driver.write_jobs(files["seal-N"], [(r, one) for r in rcpts])
            driver.write_jobs(files["open"], [(r, bundle.seal(one, [domain_key], bind=[r], eol=b"\r\n"))
                                             for r in rcpts])
            files["open-s"] = work / f"{label}-open-s.jobs"
            driver.write_jobs(files["open-s"], [(r, bundle.seal(one, [domain_key], bind=[r], eol=b"\r\n",
                                                                signer=("a.test", a_signer))) for r in rcpts])
            for name, seal_copy, rcpt in (("open-smime", lambda m: smime.seal(m, [smime_key.certificate]),
                                           "smime@b.test"),
                                          ("open-pgp", lambda m: openpgp.seal(m, [pgp_key.extract_certificate()]),
                                           "pgp@b.test")):
                files[name] = work / f"{label}-{name}.jobs"
                copy = seal_copy(message(size, [rcpt]))
                driver.write_jobs(files[name], [(rcpt, copy)] * count)
            scenarios = {
                "ceiling": (None, lambda port: run.source(port, files["one"], count, to="bob@b.test")),
                "baseline": ("baseline", lambda port: run.source(port, files["one"], count, to="bob@b.test")),
                "plain": (plain_cfg, lambda port: run.source(port, files["one"], count, to="bob@b.test")),
                "seal-1": (seal_cfg, lambda port: run.source(port, files["one"], count, to="bob@b.test")),
                "seal-1s": (sign_cfg, lambda port: run.source(port, files["one"], count, to="bob@b.test")),
                "seal-5": (seal_cfg, lambda port: run.source(port, files["five"], count, to="bob@b.test", rcpts=5)),
                "seal-N": (seal_cfg, lambda port: run.drive(port, files["seal-N"])),
                "open": (b_cfg, lambda port: run.drive(port, files["open"])),
                "open-s": (b_cfg, lambda port: run.drive(port, files["open-s"])),
                "seal-smime": (seal_cfg, lambda port: run.source(port, files["one"], count, to="smime@c.test")),
                "seal-pgp": (seal_cfg, lambda port: run.source(port, files["one"], count, to="pgp@d.test")),
                "open-smime": (b_cfg, lambda port: run.drive(port, files["open-smime"])),
                "open-pgp": (b_cfg, lambda port: run.drive(port, files["open-pgp"])),
            }
            if not args.partners:
                for name in ("seal-smime", "seal-pgp", "open-smime", "open-pgp"):
                    del scenarios[name]
            row = {}
            for name, (target, drive) in scenarios.items():
                samples = [measure(target, drive, sink_port, env) for _ in range(repeat)]
                row[name] = {
                    "msgs_per_s": statistics.median(count / s["seconds"] for s in samples),
                    "mb_per_s": statistics.median(count * size / 1e6 / s["seconds"] for s in samples),
                    "cpu_ms_per_msg": statistics.median(s["cpu"] * 1000 / count for s in samples),
                    "peak_rss_mb": max(s["peak"] for s in samples) / 1e6,
                    "runs": samples,
                }
            results["sizes"][label] = {"messages": count, "bytes": size, "scenarios": row}
            print_table(label, count, row)
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        stem = "gateway" if args.workers == 1 else f"gateway-workers{args.workers}"
        (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
        chart(results, out / f"{stem}.png")
        print(f"\nmachine: {results['machine']}\nwritten: bench/results/{stem}.json, bench/results/{stem}.png")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def partner_keys(work: Path):
    """An RSA-2048 S/MIME identity and an OpenPGP key, written where the CLI imports them."""
    import datetime

    import pysequoia
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "smime@b.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    (work / "smime.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "smime.p12").write_bytes(pkcs12.serialize_key_and_certificates(b"b", key, cert, None,
                                                                          serialization.NoEncryption()))
    pgp = pysequoia.Tsk.generate("Pgp <pgp@b.test>", profile=pysequoia.Profile.RFC4880)
    (work / "pgp.asc").write_text(str(pgp.extract_certificate()))
    (work / "pgp.key").write_bytes(bytes(pgp))
    return smime.Identity(cert, key), pgp


def measure(target, drive, sink_port: int, env) -> dict:
    """Start the proxy (fresh, so peak memory is this run's), drive it, stop it."""
    if target is None:
        return {"seconds": drive(sink_port), "cpu": 0.0, "peak": 0}
    port = free_port()
    if target == "baseline":
        cmd = [sys.executable, str(ROOT / "bench" / "passthrough.py"), str(port), str(sink_port)]
    else:
        text = Path(target).read_text()
        import re

        text = re.sub(r'listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{port}"', text)
        Path(target).write_text(text)
        # Every run sends the same bundles to the same recipients again: a
        # fresh replay cache, or the second run would be (rightly) refused.
        for stale in Path(target).parent.glob("state/replay.sqlite3*"):
            stale.unlink()
        cmd = [sys.executable, "-m", "mailseal", "-c", str(target), "serve"]
    log = tempfile.TemporaryFile()  # a pipe would fill up with log lines and stall the daemon
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port)
        time.sleep(0.3)
        pids = family(proc.pid)
        before = sum(cpu_seconds(p) for p in pids)
        seconds = drive(port)
        pids = family(proc.pid)
        cpu = sum(cpu_seconds(p) for p in pids) - before
        peak = sum(peak_rss(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        err = log.read()
        log.close()
    if b"Traceback" in err or b"refused:" in err or b"next-hop=4" in err or b"next-hop=5" in err:
        raise RuntimeError(err.decode()[-3000:])
    return {"seconds": seconds, "cpu": cpu, "peak": peak}


def print_table(label: str, count: int, row: dict) -> None:
    base = row["baseline"]
    print(f"\n{label} messages, {count} per run, {SESSIONS} sessions")
    print(f"{'scenario':<10} {'msg/s':>9} {'MB/s':>8} {'CPU ms/msg':>11} {'peak MB':>8} {'vs baseline':>12}")
    for name, r in row.items():
        ratio = "-" if name == "ceiling" else f"{r['msgs_per_s'] / base['msgs_per_s']:.2f}x"
        if name.startswith("open"):
            ratio += f"  ({r['msgs_per_s'] / row['seal-N']['msgs_per_s']:.2f}x seal-N)"
        cpu = "-" if name == "ceiling" else f"{r['cpu_ms_per_msg']:.2f}"
        peak = "-" if name == "ceiling" else f"{r['peak_rss_mb']:.0f}"
        print(f"{name:<10} {r['msgs_per_s']:9.1f} {r['mb_per_s']:8.1f} {cpu:>11} {peak:>8} {ratio:>12}")


def machine() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (StopIteration, OSError):
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def chart(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing (pip install -e '.[bench]'); no chart", file=sys.stderr)
        return
    sizes = list(results["sizes"])
    names = [n for n in results["sizes"][sizes[0]]["scenarios"]]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 4))
    if len(sizes) == 1:
        axes = [axes]
    for ax, label in zip(axes, sizes):
        row = results["sizes"][label]["scenarios"]
        values = [row[n]["msgs_per_s"] for n in names]
        colours = ["#999999", "#c44e52"] + ["#4c72b0"] * (len(names) - 2)
        ax.bar(names, values, color=colours)
        ax.set_title(f"{label} messages")
        ax.set_ylabel("messages / s")
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"mailseal vs pass-through proxy ({SESSIONS} sessions; {results['machine']})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
