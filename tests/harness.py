"""Real parts for gateway tests: free ports, a capturing SMTP sink, mailseal
daemons in child processes, and the CLI to give them keys."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

from .conftest import ROOT, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_closed(port: int, timeout: float = 20.0) -> None:
    """Until nothing accepts connections on port (a listener that stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} still accepts connections")


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    xforward: dict = field(default_factory=dict)
    tls: bool = False


class SinkHandler:
    """Stores every message; can be told to answer something else, or to
    hold its reply to DATA (a slow next hop) until the test opens the gate."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.reply = "250 2.0.0 Ok: queued"
        self.rcpt_reply: dict[str, str] = {}
        # When set, DATA is answered only once the gate is open; a client
        # that goes away meanwhile gets nothing stored (aiosmtpd cancels the
        # handler), as with a real next hop that never sent its 250.
        self.gate: threading.Event | None = None
        self.data_arrived = threading.Event()  # a whole message reached DATA
        self.abandoned = threading.Event()  # its client went away before the reply
        # When set, each accepted message is relayed on to this port and its
        # reply is the answer: a gate in front of another SMTP server.
        self.forward: int | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD NAME ADDR PROTO HELO SOURCE", "250-PIPELINING"] + responses[-1:]

    async def handle_RCPT(self, server, session, envelope, address, options):
        if address in self.rcpt_reply:
            return self.rcpt_reply[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.data_arrived.set()
        try:
            while self.gate is not None and not self.gate.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.abandoned.set()
            raise
        reply = self.reply
        if self.forward is not None:
            reply = await asyncio.to_thread(_relay, self.forward, envelope)
        if reply.startswith("2"):
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                          dict(getattr(session, "xforward", {})), session.ssl is not None))
        return reply


def _relay(port: int, envelope) -> str:
    import smtplib

    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.content)
    except smtplib.SMTPResponseException as exc:
        return f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
    except (OSError, smtplib.SMTPException) as exc:
        return f"451 4.4.1 relay to port {port} failed: {exc}"
    return "250 2.0.0 Ok: relayed"


class Sink:
    """An aiosmtpd server on a free loopback port, in its own thread."""

    def __init__(self, tls_context=None) -> None:
        from mailseal.gateway.smtp import GatewaySMTP

        self.handler = SinkHandler()
        self.port = free_port()
        outer = self

        class _Controller(Controller):
            def factory(self):
                server = type("SinkSMTP", (GatewaySMTP,), {
                    "allowed_clients": (__import__("ipaddress").ip_network("127.0.0.0/8"),),
                    "max_message_size": 200 * 1024 * 1024,
                    "line_length_limit": 200 * 1024 * 1024})(
                    outer.handler, data_size_limit=None, enable_SMTPUTF8=True, decode_data=False,
                    tls_context=tls_context)
                return server

        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages


class Daemon:
    """`mailseal serve` in a child process, with its own config and state."""

    def __init__(self, directory: Path, *, outbound: dict | None = None, inbound: dict | None = None,
                 server: dict | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "mailseal.toml"
        self.outbound_port = free_port() if outbound is not None else None
        self.inbound_port = free_port() if inbound is not None else None
        lines = ['[keystore]', 'path = "state/keystore.sqlite3"', '', '[server]', 'state_dir = "state"']
        for key, value in (server or {}).items():
            lines.append(f"{key} = {_toml(value)}")
        for name, section, port in (("outbound", outbound, self.outbound_port), ("inbound", inbound, self.inbound_port)):
            if section is not None:
                lines += ["", f"[{name}]", f'listen = "127.0.0.1:{port}"']
                lines += [f"{k} = {_toml(v)}" for k, v in section.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "daemon.log"

    def cli(self, *args: str, input: bytes = b""):
        result = run_cli("-c", str(self.config), *args, input=input)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    def start(self) -> Daemon:
        from mailseal import config as config_mod

        if not config_mod.load(self.config).keystore.path.exists():
            self.cli("keys", "init")  # as an administrator does first: `serve` never creates one
        self._log_handle = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mailseal", "-c", str(self.config), "serve"],
                                     stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        for port in (self.outbound_port, self.inbound_port):
            if port:
                try:
                    wait_for_port(port, proc=self.proc)
                except Exception:
                    raise RuntimeError(f"daemon did not start: {self.log.read_text()}") from None
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log_handle.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._log_handle.close()  # start() opens it again

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_data(sock: socket.socket, rcpt: str, mail_from: str = "a@a.test"):
    """A raw session up to the 354, with MAIL, RCPT and DATA pipelined."""
    f = sock.makefile("rwb")
    f.readline()
    f.write(b"EHLO c.test\r\n")
    f.flush()
    while not f.readline().startswith(b"250 "):
        pass
    f.write(f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    f.flush()
    assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    return f


@dataclass
class Transaction:
    mail: tuple[int, bytes]
    rcpts: list[tuple[int, bytes]]
    data: tuple[int, bytes] | None


def smtp_transaction(port: int, mail_from: str, rcpts: list[str], message: bytes, *, lmtp: bool = False,
                     xforward: str | None = None, mail_options: tuple[str, ...] = ()) -> Transaction:
    """One transaction with every reply kept (smtplib hides most of them)."""
    import smtplib

    client = smtplib.LMTP("127.0.0.1", port) if lmtp else smtplib.SMTP("127.0.0.1", port, timeout=120)
    try:
        client.ehlo_or_helo_if_needed() if not lmtp else client.ehlo("client.test")
        if xforward:
            assert client.docmd("XFORWARD", xforward)[0] == 250
        mail = client.mail(mail_from, list(mail_options))
        if mail[0] != 250:
            return Transaction(mail, [], None)
        rcpt_replies = [client.rcpt(r) for r in rcpts]
        if not any(code == 250 for code, _ in rcpt_replies):
            return Transaction(mail, rcpt_replies, None)
        if lmtp:
            code, text = client.docmd("DATA")
            assert code == 354, (code, text)
            from mailseal.gateway.relay import dot_stuff

            client.send(b"".join(dot_stuff([message])) + b".\r\n")
            replies = [client.getreply() for r in rcpt_replies if r[0] == 250]
            return Transaction(mail, rcpt_replies, replies)  # type: ignore[arg-type]
        data = client.data(message)
        return Transaction(mail, rcpt_replies, data)
    finally:
        try:
            client.quit()
        except Exception:  # noqa: BLE001 - the server may have gone
            client.close()
