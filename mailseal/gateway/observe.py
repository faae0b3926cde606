"""The [metrics] endpoint: GET /metrics (Prometheus text) and GET /health.

It runs in a thread of the process that serves it (the only process, or the
supervisor of several workers), never on the mail path's event loop: a
scrape or a slow health check never delays mail.

/health answers 200 when every check passes, else 503, with a small JSON
body: {"status": "ok"|"fail", "checks": {name: "ok" | what is wrong}}.
Checks: the keystore can be read, the replay cache can be written (inbound),
each SMTP next hop greets with 220 (a Maildir next hop: its directory is
writable).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .notify import start_thread

log = logging.getLogger("mailseal.metrics")
CHECK_TIMEOUT = 2.0


def _sqlite(what: str, path, uri: str, statements: tuple[str, ...]) -> str:
    try:
        db = sqlite3.connect(uri, uri=True, timeout=CHECK_TIMEOUT, isolation_level=None)
        try:
            for statement in statements:
                db.execute(statement)
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"{what} {path}: {exc}"
    return "ok"


def _keystore(path) -> str:
    return _sqlite("keystore", path, f"file:{path}?mode=ro", ("SELECT count(*) FROM meta",))


def _replay_cache(path) -> str:
    if not path.exists():
        return f"replay cache {path} does not exist"
    # The write lock taken and given back: writable, and not locked for good.
    return _sqlite("replay cache", path, f"file:{path}?mode=rw", ("BEGIN IMMEDIATE", "ROLLBACK"))


def _next_hop(hop) -> str:
    if hop.maildir is not None:
        target = hop.maildir if hop.maildir.exists() else hop.maildir.parent
        return "ok" if os.access(target, os.W_OK) else f"maildir {hop.maildir} is not writable"
    ep = hop.endpoint
    try:
        with socket.create_connection((ep.host, ep.port), timeout=CHECK_TIMEOUT) as sock:
            sock.settimeout(CHECK_TIMEOUT)
            greeting = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        return f"next hop {ep}: {exc.strerror or type(exc).__name__}"
    if not greeting.startswith(b"220"):
        return f"next hop {ep} greeted with {greeting[:3].decode('ascii', 'replace') or 'nothing'}"
    return "ok"


def health(cfg) -> tuple[bool, dict[str, str]]:
    checks = {"keystore": _keystore(cfg.keystore.path)}
    if cfg.inbound is not None:
        checks["replay_cache"] = _replay_cache(cfg.server.state_dir / "replay.sqlite3")
        checks["inbound_next_hop"] = _next_hop(cfg.inbound.next_hop)
    if cfg.outbound is not None:
        checks["outbound_next_hop"] = _next_hop(cfg.outbound.next_hop)
    return all(v == "ok" for v in checks.values()), checks


class Endpoint:
    """The HTTP server thread; `config` may be replaced on reload."""

    def __init__(self, cfg, registry) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        outer = self
        self.config = cfg

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path == "/health":
                    ok, checks = health(outer.config)
                    body = json.dumps({"status": "ok" if ok else "fail", "checks": checks}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        listen = cfg.metrics.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        server_class = type("MetricsServer", (ThreadingHTTPServer,), {"address_family": family,
                                                                       "daemon_threads": True})
        try:
            self.server = server_class((listen.host, listen.port), Handler)
        except OSError as exc:
            from ..config import ConfigError

            raise ConfigError(f"[metrics] listen = {listen}: {exc.strerror}") from None
        # Request threads inherit the serving thread's blocked signals.
        self.thread = start_thread(self.server.serve_forever, "metrics")
        log.info("metrics and health on http://%s/metrics and /health", listen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
