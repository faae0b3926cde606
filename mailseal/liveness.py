"""Who holds a pending replay claim, and whether that process still lives.

Every process that opens the replay cache registers an instance: its host,
pid, a start marker and a heartbeat. A pending claim names its instance, so
a retry that meets it can tell "still being delivered" (wait: 4xx) from
"left behind by a crash" (take it over and deliver: a duplicate at worst,
never a loss).

Alive means: heartbeat fresh, and on the same host the pid still runs and
is the same process (same boot, same start time), so a retry after a
SIGKILL and a restart proceeds at once instead of waiting for the heartbeat
to go stale. For instances on other hosts (a shared database) only the
heartbeat can tell.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

# An instance refreshes its heartbeat this often, and is taken for dead when
# its heartbeat is older than INSTANCE_TIMEOUT (named in docs/OPERATIONS.md).
HEARTBEAT_INTERVAL = 10.0
INSTANCE_TIMEOUT = 60

_PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    host: str
    pid: int
    start: str  # "BOOT-ID:START-TICKS" on Linux; "" without /proc


def this_process(host: str | None = None) -> Process:
    pid = os.getpid()
    return Process(host if host is not None else socket.gethostname(), pid, process_start(pid) or "")


def process_start(pid: int) -> str | None:
    """What tells this process from a later one with the same pid, or None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # Field 22 (starttime, clock ticks after boot) counts from field 3, which
    # follows the ")" that ends the command name (itself free to hold spaces
    # and parentheses).
    ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
    return f"{_boot_id()}:{ticks}"


def _boot_id() -> str:
    """This boot's id; "" where /proc/sys is hidden (systemd ProcSubset=pid): the ticks then suffice."""
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def runs(pid: int, start: str) -> bool:
    """Whether the local process `pid` started at `start` still runs."""
    if start:
        return process_start(pid) == start
    try:  # no /proc: the pid alone (it may have been reused)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(instance: Process | None, heartbeat: float, now: float, local_host: str) -> bool:
    """The liveness rule for the holder of a pending claim (None: no such instance)."""
    if instance is None or now - heartbeat > INSTANCE_TIMEOUT:
        return False
    return instance.host != local_host or runs(instance.pid, instance.start)
