"""`make demo`: one message through the outbound and the inbound listener of
the `make run` gateway, showing the sealed and the opened forms.

Starts the gateway itself when it is not running yet, and gives the demo
recipient a key the first time.
"""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import config as config_mod

DEMO_RCPT = "bob@demo.test"
MESSAGE = (
    "From: Alice <alice@demo.test>\r\n"
    f"To: Bob <{DEMO_RCPT}>\r\n"
    "Subject: Quarterly figures (only Bob may read this)\r\n"
    "Date: {date}\r\n"
    "Message-ID: <demo-{stamp}@demo.test>\r\n"
    "\r\n"
    "Hello Bob,\r\n\r\nrevenue is up 12%. Keep it quiet.\r\n\r\nAlice\r\n"
)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _mailseal(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailseal", "-c", str(config), *args],
                          capture_output=True, text=True)


def _newest(maildir: Path, before: set[Path], timeout: float = 10) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = set((maildir / "new").glob("*")) - before if (maildir / "new").is_dir() else set()
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        time.sleep(0.05)
    raise SystemExit(f"demo: nothing arrived in {maildir}")


def _hop(hop: config_mod.NextHop) -> str:
    return f"the Maildir {hop.maildir}" if hop.maildir is not None else f"the next hop {hop.endpoint}"


def where(path: Path) -> int:
    """What `make run` says before it starts: where mail goes and how to stop it."""
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"mailseal: error: {exc}", file=sys.stderr)
        return 2
    if cfg.outbound is not None:
        print(f"mail sent to {cfg.outbound.listen} (outbound) is sealed and goes to {_hop(cfg.outbound.next_hop)}")
    if cfg.inbound is not None:
        print(f"mail sent to {cfg.inbound.listen} (inbound) is opened and goes to {_hop(cfg.inbound.next_hop)}")
    print("Ctrl-C stops the gateway; try `make demo` in another terminal to send a message through both.")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--where"]:
        return where(Path(sys.argv[2] if len(sys.argv) > 2 else "config/mailseal.toml"))
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "config/mailseal.toml")
    cfg = config_mod.load(path)
    if cfg.outbound is None or cfg.inbound is None or cfg.outbound.next_hop.maildir is None:
        print("demo: needs the make-run configuration (outbound to a maildir, and inbound)", file=sys.stderr)
        return 2
    if not any(k for k in _mailseal(path, "keys", "list", "--json").stdout.split() if DEMO_RCPT in k):
        print(f"== giving {DEMO_RCPT} a post-quantum key (local identity + the public key to seal to)")
        _mailseal(path, "keys", "generate", DEMO_RCPT)
        card = _mailseal(path, "keys", "export", DEMO_RCPT).stdout
        subprocess.run([sys.executable, "-m", "mailseal", "-c", str(path), "keys", "import", DEMO_RCPT, "-"],
                       input=card, text=True, check=True, capture_output=True)
    server = None
    if not _listening(cfg.outbound.listen.port):
        print("== starting the gateway (make run is not running)")
        server = subprocess.Popen([sys.executable, "-m", "mailseal", "-c", str(path), "serve"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 15
        while not (_listening(cfg.outbound.listen.port) and _listening(cfg.inbound.listen.port)):
            if time.time() > deadline or server.poll() is not None:
                print("demo: the gateway did not start; run `make run` to see why", file=sys.stderr)
                return 1
            time.sleep(0.1)
    try:
        outbox, inbox = cfg.outbound.next_hop.maildir, cfg.inbound.next_hop.maildir
        before_out = set((outbox / "new").glob("*")) if (outbox / "new").is_dir() else set()
        message = MESSAGE.format(date=time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
                                 stamp=int(time.time())).encode()
        print(f"== 1. Alice's message, sent to the outbound listener on {cfg.outbound.listen}\n")
        print(message.decode().replace("\r\n", "\n"))
        with smtplib.SMTP(cfg.outbound.listen.host, cfg.outbound.listen.port) as smtp:
            smtp.sendmail("alice@demo.test", [DEMO_RCPT], message)
        sealed_path = _newest(outbox, before_out)
        sealed = sealed_path.read_bytes()
        print(f"== 2. what left the outbound side ({sealed_path}):\n")
        text = sealed.decode().replace("\r\n", "\n").splitlines()
        shown = text[:28] + ["  [... base64 ciphertext ...]"] + text[-2:] if len(text) > 32 else text
        print("\n".join(shown) + "\n")
        before_in = set((inbox / "new").glob("*")) if (inbox / "new").is_dir() else set()
        print(f"== 3. that sealed message, handed to the inbound listener on {cfg.inbound.listen}")
        with smtplib.SMTP(cfg.inbound.listen.host, cfg.inbound.listen.port) as smtp:
            smtp.sendmail("alice@demo.test", [DEMO_RCPT], sealed)
        opened_path = _newest(inbox, before_in)
        opened = opened_path.read_bytes()
        print(f"== 4. what Bob's mailbox receives ({opened_path}):\n")
        print(opened.decode().replace("\r\n", "\n"))
        same = opened.split(b"\r\n", 1)[1] == message
        print(f"== opened message equals the original byte for byte (apart from the trace header): {same}")
        return 0 if same else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
