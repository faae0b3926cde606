"""One `serve` per configuration, and workers that do not outlive it.

The lock is an flock(2) on a file in the state directory, one per listener
address (several instances may share a state directory if they listen
apart, as gateway nodes share a replay cache): the kernel drops
it when the last process holding the file closes (a crash, SIGKILL or OOM
included), so a stale lock never blocks a restart. Workers inherit the
locked file, so while an orphaned worker still serves, a new supervisor
refuses to start next to it. Workers ask the kernel for SIGTERM when their
parent dies (PR_SET_PDEATHSIG), so that does not last: they stop accepting
at once, finish the messages in flight and exit, and the ports are free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class AlreadyRunning(Exception):
    """Another `serve` holds this state directory for the same listener."""


def lock_path(state_dir: Path, listen) -> Path:
    """One lock per listener address: two instances that share a state
    directory but listen apart (an outbound-only and an inbound-only
    gateway) may run side by side; two on one address may not."""
    host = str(listen.host).replace(":", "_")
    return Path(state_dir) / f"serve-{host}-{listen.port}.lock"


def lock_listeners(state_dir: Path, listeners) -> list[int]:
    """Take the instance locks; the returned descriptors hold them (keep them open)."""
    held: list[int] = []
    try:
        for listen in sorted(set(listeners), key=str):
            held.append(_lock(lock_path(state_dir, listen), listen))
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


def _lock(path: Path, listen) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AlreadyRunning(f"cannot open the instance lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(f"another `mailseal serve` (pid {holder}) runs this configuration: it listens on "
                             f"{listen} with the state directory {path.parent} (lock {path.name}); "
                             "stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def die_with_parent(parent_pid: int) -> None:
    """In a forked worker: SIGTERM when the supervisor dies (Linux)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
