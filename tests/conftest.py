from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailseal import age

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pq_identity() -> age.HybridIdentity:
    return age.generate()


@pytest.fixture(scope="session")
def classic_identity() -> age.X25519Identity:
    return age.generate(classic=True)


@pytest.fixture(scope="session")
def other_identity() -> age.HybridIdentity:
    return age.generate()


def run_cli(*args: str, input: bytes = b"", cwd: Path | None = None, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """The real command line, in a child process, as an administrator runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mailseal", *args], input=input,
                          capture_output=True, cwd=cwd, env=full_env, timeout=120)
