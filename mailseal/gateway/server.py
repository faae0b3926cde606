"""`mailseal serve`: the listeners, their shared state, and the life of the process.

SIGTERM stops accepting connections, lets the messages in flight finish,
then exits; SIGHUP re-reads the configuration (a broken one is reported and
the running one kept); readiness and state go to systemd by sd_notify when
NOTIFY_SOCKET is set (gateway/notify.py: watchdog, STATUS, reload
completion); [metrics] serves /metrics and /health from a thread
(gateway/observe.py), in the supervisor when there are several workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config as config_mod
from .. import metrics as metrics_mod
from ..keystore import SQLiteKeyStore, open_keystore
from ..quarantine import Quarantine, quarantine_for
from ..replay import ReplayCache, Window
from . import instance
from .inbound import InboundHandler
from .notify import Monitor, Pulse, reloading, sd_notify
from .outbound import ForwardHandler, OutboundHandler
from .relay import next_hop_for
from .smtp import Admission, make_server, reconfigure

log = logging.getLogger("mailseal.server")
STOP_GRACE = 60.0
# Blocked in a worker from its fork until its event loop handles them, so a
# SIGTERM that comes while it starts stops it cleanly instead of killing it.
CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
HANDLERS = {"outbound": OutboundHandler, "forward": ForwardHandler, "inbound": InboundHandler}


@dataclass
class Context:
    """What the handlers share; replaced piece by piece on reload."""

    config: config_mod.Config
    keystore: SQLiteKeyStore
    replay_cache: ReplayCache | None = None
    quarantine: Quarantine | None = None
    outbound_next_hop: object = None
    inbound_next_hop: object = None
    stopping: bool = False
    sessions: set = field(default_factory=set)
    metrics: metrics_mod.NullMetrics = field(default_factory=metrics_mod.NullMetrics)
    tally: dict = field(default_factory=lambda: dict.fromkeys(metrics_mod.DECISIONS, 0))  # for STATUS=

    def count(self, direction: str, decision: str, outcome: dict, seconds: float) -> None:
        """Once per message: the STATUS= tally and the metrics."""
        label, reason = metrics_mod.decision_of(decision, outcome)
        self.tally[label] += 1
        self.metrics.message(direction, label, reason, outcome, seconds)

    @classmethod
    def build(cls, cfg: config_mod.Config, replay_cache: ReplayCache | None = None) -> Context:
        """`replay_cache`: one made by the caller (tests: with their own fsync)."""
        # Never created here: a typo in [keystore] path must stop the start,
        # not run on an empty keystore that seals nothing (`keys init` makes one).
        keystore = open_keystore(cfg.keystore, create=False, actor="daemon")
        if cfg.inbound is not None:
            keystore.master()  # a missing or wrong master key stops the start, loudly
        ctx = cls(cfg, keystore, replay_cache)
        ctx.apply(cfg)
        return ctx

    def apply(self, cfg: config_mod.Config) -> None:
        self.config = cfg
        if cfg.outbound is not None:
            self.outbound_next_hop = next_hop_for(cfg.outbound.next_hop)
        if cfg.inbound is not None:
            self.inbound_next_hop = next_hop_for(cfg.inbound.next_hop)
            window = Window(cfg.inbound.replay_window, cfg.inbound.max_clock_skew)
            if self.replay_cache is None:
                self.replay_cache = ReplayCache(cfg.server.state_dir / "replay.sqlite3", window)
            self.replay_cache.window = window
            self.quarantine = quarantine_for(cfg)

    def close(self) -> None:
        self.keystore.close()
        if self.replay_cache is not None:
            self.replay_cache.close()  # its pending claims, if any, are now a dead instance's


class Gateway:
    def __init__(self, cfg: config_mod.Config, replay_cache: ReplayCache | None = None) -> None:
        self.ctx = Context.build(cfg, replay_cache)
        self.servers: list[asyncio.base_events.Server] = []
        self.factories: list[tuple[object, object]] = []  # (handler, session factory)
        self._stopped = asyncio.Event()
        self._listen = self._listeners(cfg)
        self.endpoint = None  # the [metrics] endpoint, when this process serves it
        self.reloaded = lambda: None  # a worker tells its supervisor
        # One count for both listeners: the limits guard the process.
        self.admission = Admission(cfg.server.max_connections_per_client, cfg.server.max_connections)

    @staticmethod
    def _listeners(cfg: config_mod.Config) -> list[tuple[str, object]]:
        out = []
        if cfg.outbound is not None:
            out.append(("outbound", cfg.outbound))
            if cfg.outbound.forward_listen is not None:
                out.append(("forward", dataclasses.replace(cfg.outbound, listen=cfg.outbound.forward_listen)))
        if cfg.inbound is not None:
            out.append(("inbound", cfg.inbound))
        return out

    async def start(self, reuse_port: bool = False) -> None:
        cfg = self.ctx.config
        for name, section in self._listen:
            handler = HANDLERS[name](self.ctx)
            factory = make_server(handler, protocol=section.protocol,
                                  allowed_clients=cfg.server.allowed_clients,
                                  max_message_size=handler.size_limit(),
                                  registry=self.ctx.sessions, admission=self.admission,
                                  idle_timeout=cfg.server.idle_timeout, data_timeout=cfg.server.data_timeout)
            self.factories.append((handler, factory))
            loop = asyncio.get_running_loop()
            try:
                server = await loop.create_server(factory, section.listen.host, section.listen.port,
                                                  reuse_address=True, reuse_port=reuse_port or None)
            except OSError as exc:
                setting = "[outbound] forward_listen" if name == "forward" else f"[{name}] listen"
                raise config_mod.ConfigError(f"{setting} = {section.listen}: {exc.strerror}") from None
            self.servers.append(server)
            if name != "inbound" and section.mode == "shadow":
                log.warning("%s listener in shadow mode: nothing is sealed or refused, mail passes "
                            "unchanged; decisions are only logged", name)
            log.info("%s listener (%s) on %s, next hop %s", name, section.protocol.upper(), section.listen,
                     self.ctx.inbound_next_hop if name == "inbound" else self.ctx.outbound_next_hop)

    def reload(self, path: Path) -> None:
        sd_notify(reloading())
        try:
            cfg = config_mod.load(path)
        except config_mod.ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            sd_notify("READY=1")
            self.reloaded()
            return
        if self._listeners(cfg) and [(n, s.listen, s.protocol) for n, s in self._listeners(cfg)] != \
                [(n, s.listen, s.protocol) for n, s in self._listen]:
            log.warning("reload: listener addresses or protocols changed; they take effect on restart")
        if cfg.keystore != self.ctx.config.keystore:
            log.warning("reload: [keystore] changed; it takes effect on restart")
        self.ctx.apply(cfg)
        self.admission.per_client = cfg.server.max_connections_per_client
        self.admission.total = cfg.server.max_connections
        for handler, factory in self.factories:
            reconfigure(factory, allowed_clients=cfg.server.allowed_clients, max_message_size=handler.size_limit(),
                        idle_timeout=cfg.server.idle_timeout, data_timeout=cfg.server.data_timeout)
        if self.endpoint is not None:
            self.endpoint.config = cfg
        log.info("configuration reloaded from %s", path)
        sd_notify("READY=1")
        self.reloaded()

    async def stop(self) -> None:
        """Stop accepting; let messages in flight finish (up to STOP_GRACE); close."""
        sd_notify("STOPPING=1")
        self.ctx.stopping = True
        for server in self.servers:
            server.close()
        deadline = asyncio.get_running_loop().time() + STOP_GRACE
        while any(s.busy for s in list(self.ctx.sessions) if s.transport) and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.ctx.sessions):
            if session.transport is not None:
                session.transport.close()
        for hop in (self.ctx.outbound_next_hop, self.ctx.inbound_next_hop):
            if hop is not None:
                await hop.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


def _load(path: Path) -> config_mod.Config:
    cfg = config_mod.load(path)
    if cfg.outbound is None and cfg.inbound is None:
        raise config_mod.ConfigError("no [outbound] or [inbound] section: nothing to serve")
    return cfg


async def run(path: Path, *, worker: int | None = None, ready_fd: int | None = None,
              heartbeat_fd: int | None = None) -> int:
    """One event loop serving the listeners; a worker shares the ports with its siblings."""
    cfg = _load(path)
    gateway = Gateway(cfg)
    if cfg.metrics is not None:
        if worker is None:
            from .observe import Endpoint

            registry = metrics_mod.registry_for(cfg, multiprocess=False)
            gateway.ctx.metrics = metrics_mod.Metrics(registry)
            gateway.endpoint = Endpoint(cfg, registry)
        elif os.environ.get(metrics_mod.MULTIPROC_ENV):
            # Counted in this worker's files; the supervisor's endpoint adds them up.
            from prometheus_client import CollectorRegistry

            gateway.ctx.metrics = metrics_mod.Metrics(CollectorRegistry())
    await gateway.start(reuse_port=worker is not None)
    loop = asyncio.get_running_loop()
    pulse = Pulse(loop, gateway.ctx.tally, heartbeat_fd)
    gateway.reloaded = lambda: pulse.send("reloaded\n")
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(gateway.stop()))
    loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(gateway.stop()))
    loop.add_signal_handler(signal.SIGHUP, lambda: gateway.reload(path))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)  # blocked since the fork (a worker)
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    else:
        sd_notify("READY=1")
    log.info("mailseal ready%s", f" (worker {worker})" if worker is not None else "")
    # One process says it, not each worker.
    expiry = asyncio.ensure_future(warn_expiring_keys(gateway.ctx)) if worker in (None, 0) else None
    await gateway.wait()
    if expiry is not None:
        expiry.cancel()
    if gateway.endpoint is not None:
        gateway.endpoint.close()
    gateway.ctx.close()
    log.info("mailseal stopped")
    return 0


async def warn_expiring_keys(ctx: Context, interval: float = 86400) -> None:
    """At start, then daily: a warning per key in use that expires soon (or has)."""
    from ..keystore import KeystoreError
    from ..keystore.expiry import warnings

    while True:
        try:
            for line in warnings(ctx.keystore.list_keys(), time.time(), ctx.config.keystore.expiry_warning):
                log.warning("key expiry: %s", line)
        except KeystoreError as exc:
            log.error("key expiry check failed: %s", exc)
        await asyncio.sleep(interval)


def serve(path: Path) -> int:
    """`mailseal serve`: one process, or a supervisor of `workers` processes.

    One instance per configuration (gateway/instance.py): a lock per
    listener in the state directory, taken before anything listens and
    held, by the workers too, until the last of them exits.
    """
    cfg = _load(path)
    setup_logging(cfg.server.log_format)
    summary = _keystore_summary(cfg)  # a missing keystore stops the start before anything is made
    locks = instance.lock_listeners(cfg.server.state_dir, [section.listen for _, section in Gateway._listeners(cfg)])
    try:
        log.info("%s", summary)
        if cfg.server.workers <= 1:
            return asyncio.run(run(path))
        return _supervise(path, cfg)
    finally:
        for fd in locks:
            os.close(fd)


def _keystore_summary(cfg: config_mod.Config) -> str:
    """What the daemon runs on, for the log: a wrong path shows at once."""
    with open_keystore(cfg.keystore, create=False, actor="daemon") as keystore:
        records = keystore.list_keys()
        policies = keystore.list_policies()
        inbound = keystore.list_inbound_policies()
    local = sum(1 for r in records if r.scope == "local")
    return (f"keystore {cfg.keystore.path}: {len(records)} keys ({local} local, {len(records) - local} remote), "
            f"{len(policies)} policies, {len(inbound)} inbound policies")


def _supervise(path: Path, cfg: config_mod.Config) -> int:
    """Fork the workers, pass signals on, replace a worker that dies.

    The keystore is checked here first, so a missing or broken one stops the
    start before any fork; each worker then opens its own connections, as
    SQLite requires. Workers get SIGTERM when the supervisor dies.
    """
    Context.build(cfg).close()  # nothing of it (threads, connections) may cross the fork
    supervisor = os.getpid()
    children: dict[int, int] = {}
    stopping = False
    endpoint = None
    if cfg.metrics is not None:
        # Before prometheus_client is imported anywhere: the workers count in files.
        metrics_mod.prepare_multiprocess(cfg.server.state_dir, cfg.metrics.listen.port)
        from .observe import Endpoint

        endpoint = Endpoint(cfg, metrics_mod.registry_for(cfg, multiprocess=True))
    monitor = Monitor(cfg.server.workers)

    def spawn(index: int) -> None:
        # Blocked across the fork: the child never runs the supervisor's
        # handler, and keeps a SIGTERM pending until its loop handles it
        # (run() unblocks); the parent unblocks once the child is in
        # `children`, where forward() finds it.
        signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
        if stopping:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
            return
        read_fd, write_fd = os.pipe()
        beat_read, beat_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.close(beat_read)
            if endpoint is not None:  # the supervisor's: a worker must not keep its port
                endpoint.server.socket.close()
            os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
            for sig in CONTROL_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            # After the reset: the supervisor's handler must not catch this one.
            instance.die_with_parent(supervisor)
            code = 1
            try:
                code = asyncio.run(run(path, worker=index, ready_fd=write_fd, heartbeat_fd=beat_write))
            except BaseException as exc:  # noqa: BLE001 - report, never a traceback
                log.error("worker %d failed: %s", index, exc)
            finally:
                os._exit(code)
        children[pid] = index  # known before any SIGTERM is handled: forward() reaches it
        os.close(beat_write)
        monitor.add(pid, beat_read)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
        os.close(write_fd)
        os.read(read_fd, 1)  # the worker listens (or has died)
        os.close(read_fd)

    def forward(sig: int, _frame=None) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            sd_notify("STOPPING=1")
        elif sig == signal.SIGHUP:
            monitor.reload()  # READY=1 once every worker has reloaded
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in CONTROL_SIGNALS:
        signal.signal(sig, forward)
    for index in range(cfg.server.workers):
        spawn(index)
    sd_notify("READY=1")
    log.info("mailseal ready with %d workers", cfg.server.workers)
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        monitor.remove(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if not stopping:
            log.error("worker %d exited with %d; starting a new one", index, exit_code)
            time.sleep(0.5)
            spawn(index)
        elif exit_code:
            status = 1
    if endpoint is not None:
        endpoint.close()
    log.info("mailseal stopped")
    return status


class JSONFormatter(logging.Formatter):
    """One JSON object a line; a message line carries its fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        return json.dumps(out, ensure_ascii=False)


def setup_logging(log_format: str = "text") -> None:
    """Text (with a timestamp unless journald adds its own) or JSON lines on stderr."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # aiosmtpd logs every command line at INFO: too chatty for a mail path.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
