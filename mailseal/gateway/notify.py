"""Talking to systemd: readiness, STATUS, the watchdog, reload completion.

The watchdog's WATCHDOG=1 comes from the event loop itself (a timer on the
loop), so a stalled loop stops it and systemd restarts the service. With
several workers each worker's loop sends a heartbeat line through a pipe to
the supervisor (`beat SEALED OPENED REFUSED`, once a HEARTBEAT), and the
supervisor pings systemd only while every worker has beaten recently; a
worker answers a reload with `reloaded`, and the supervisor says READY=1
once all of them have.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time

log = logging.getLogger("mailseal.server")
HEARTBEAT = 1.0  # seconds between a worker's heartbeats
STATUS_INTERVAL = 5.0  # STATUS= at most this often without a watchdog


def start_thread(target, name: str) -> threading.Thread:
    """A helper thread that never takes the process's control signals: they
    stay with the main thread, which blocks them while it forks a worker."""

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        target()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def sd_notify(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def reloading() -> str:
    """RELOADING=1 with the CLOCK_MONOTONIC time systemd >= 253 expects beside it."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """How often to ping: half of WATCHDOG_USEC, when the watchdog is on for this process."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def status_line(sealed: int, opened: int, refused: int, workers: int | None = None) -> str:
    text = f"{sealed} sealed, {opened} opened, {refused} refused since start"
    return text + (f"; {workers} workers" if workers else "")


def _counts(tally: dict) -> tuple[int, int, int]:
    return tally["sealed"], tally["opened"], tally["refused"] + tally["quarantined"]


class Pulse:
    """Timers on the event loop: WATCHDOG=1 and STATUS= (one process), or a
    worker's heartbeat to its supervisor."""

    def __init__(self, loop, tally: dict, heartbeat_fd: int | None = None) -> None:
        self.loop, self.tally, self.fd = loop, tally, heartbeat_fd
        self.watchdog = watchdog_interval() if heartbeat_fd is None else None
        self.last_status = None
        if heartbeat_fd is not None:
            os.set_blocking(heartbeat_fd, False)
            self.interval = HEARTBEAT
        elif self.watchdog is not None:
            self.interval = self.watchdog
        elif os.environ.get("NOTIFY_SOCKET"):
            self.interval = STATUS_INTERVAL
        else:
            return
        self.loop.call_soon(self.beat)

    def beat(self) -> None:
        if self.fd is not None:
            self.send("beat %d %d %d\n" % _counts(self.tally))
        else:
            parts = ["WATCHDOG=1"] if self.watchdog is not None else []
            status = status_line(*_counts(self.tally))
            if status != self.last_status:
                parts.append(f"STATUS={status}")
                self.last_status = status
            if parts:
                sd_notify("\n".join(parts))
        self.loop.call_later(self.interval, self.beat)

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.encode())
        except (BlockingIOError, BrokenPipeError):
            pass  # a supervisor that does not read has its own problem; never block the loop


class Monitor:
    """The supervisor's side: workers' heartbeats, reload acknowledgements,
    and what it tells systemd."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.watchdog = watchdog_interval()
        self.lock = threading.Lock()
        self.fds: dict[int, int] = {}  # read end -> pid
        self.seen: dict[int, float] = {}  # pid -> last heartbeat
        self.counts: dict[int, tuple[int, int, int]] = {}
        self.retired = (0, 0, 0)  # what workers that died had counted
        self.pending_reload: set[int] | None = None
        self.last_status = None
        if self.watchdog is not None or os.environ.get("NOTIFY_SOCKET"):
            start_thread(self._run, "monitor")

    def add(self, pid: int, fd: int) -> None:
        os.set_blocking(fd, False)
        with self.lock:
            self.fds[fd] = pid
            self.seen[pid] = time.monotonic()

    def remove(self, pid: int) -> None:
        with self.lock:
            for fd, owner in list(self.fds.items()):
                if owner == pid:
                    del self.fds[fd]
                    os.close(fd)
            self.seen.pop(pid, None)
            gone = self.counts.pop(pid, (0, 0, 0))
            self.retired = tuple(a + b for a, b in zip(self.retired, gone))
            if self.pending_reload is not None:
                self.pending_reload.discard(pid)
                self._reload_done()

    def reload(self) -> None:
        sd_notify(reloading())
        with self.lock:
            self.pending_reload = set(self.seen)
            self._reload_done()

    def _reload_done(self) -> None:
        if self.pending_reload is not None and not self.pending_reload:
            self.pending_reload = None
            sd_notify("READY=1")

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        with self.lock:
            pid = self.fds.get(fd)
            if pid is None:
                return
            for line in data.decode("ascii", "replace").splitlines():
                words = line.split()
                if words[:1] == ["beat"] and len(words) == 4:
                    self.seen[pid] = time.monotonic()
                    self.counts[pid] = tuple(int(w) for w in words[1:])
                elif words == ["reloaded"] and self.pending_reload is not None:
                    self.pending_reload.discard(pid)
                    self._reload_done()

    def _run(self) -> None:
        every = self.watchdog or STATUS_INTERVAL
        due = time.monotonic() + min(every, HEARTBEAT * 2)
        while True:
            with self.lock:
                fds = list(self.fds)
            try:
                ready = select.select(fds, [], [], HEARTBEAT / 2)[0] if fds else time.sleep(HEARTBEAT / 2) or []
            except (OSError, ValueError):
                continue  # a pipe closed meanwhile (a worker died)
            for fd in ready:
                self._read(fd)
            now = time.monotonic()
            if now < due:
                continue
            due = now + every
            with self.lock:
                # Every worker's loop must have beaten lately: one stalled
                # worker stops the pings, and systemd restarts the service.
                alive = bool(self.seen) and all(now - t < max(3 * HEARTBEAT, every) for t in self.seen.values())
                total = [sum(c[i] for c in self.counts.values()) + self.retired[i] for i in range(3)]
            parts = ["WATCHDOG=1"] if self.watchdog is not None and alive else []
            status = status_line(*total, workers=self.workers)
            if status != self.last_status:
                parts.append(f"STATUS={status}")
                self.last_status = status
            if parts:
                sd_notify("\n".join(parts))
