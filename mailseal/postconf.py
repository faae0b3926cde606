"""What Postfix is configured to do, read with postconf(1): the sizes that
must agree with mailseal's (docs/OPERATIONS.md section 4) and the queue
lifetime the replay window must outlast.

Read only, never written. Where postconf is not installed (mailseal on its
own host) there is nothing to compare, and the caller says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAIN = ("message_size_limit", "mailbox_size_limit", "virtual_mailbox_limit", "maximal_queue_lifetime",
        "content_filter")


class PostconfError(Exception):
    """postconf is missing or cannot read the configuration."""


@dataclass(frozen=True)
class Service:
    """One master.cf entry and its `-o` overrides."""

    name: str
    type: str
    command: str
    overrides: dict[str, str]

    def get(self, main: dict[str, str], name: str) -> str:
        return self.overrides.get(name, main.get(name, ""))


@dataclass(frozen=True)
class Postfix:
    config_dir: str
    main: dict[str, str]
    services: list[Service]


def find_postconf() -> str | None:
    return shutil.which("postconf") or next(
        (p for p in ("/usr/sbin/postconf", "/usr/local/sbin/postconf") if os.access(p, os.X_OK)), None)


def _run(postconf: str, config_dir: Path | None, *args: str) -> str:
    command = [postconf, *(("-c", str(config_dir)) if config_dir else ()), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostconfError(f"cannot run {postconf}: {exc}") from None
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["failed"])[0]
        raise PostconfError(f"{' '.join(command)}: {first}")
    return result.stdout


def read(config_dir: Path | None = None, postconf: str | None = None) -> Postfix:
    postconf = postconf or find_postconf()
    if postconf is None:
        raise PostconfError("postconf is not installed")
    values = _run(postconf, config_dir, "-h", *MAIN).splitlines()
    if len(values) != len(MAIN):
        raise PostconfError(f"postconf answered {len(values)} values for {len(MAIN)} parameters")
    main = dict(zip(MAIN, (v.strip() for v in values)))
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    for line in _run(postconf, config_dir, "-P").splitlines():
        key, sep, value = line.partition(" = ")
        parts = key.strip().rsplit("/", 2)
        if sep and len(parts) == 3:
            overrides.setdefault((parts[0], parts[1]), {})[parts[2]] = value.strip()
    services = []
    for line in _run(postconf, config_dir, "-M").splitlines():
        fields = line.split()
        if len(fields) >= 8:
            services.append(Service(fields[0], fields[1], fields[7], overrides.get((fields[0], fields[1]), {})))
    return Postfix(str(config_dir or "/etc/postfix"), main, services)
