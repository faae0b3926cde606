"""`serve` runs on the keystore an administrator made, once per configuration,
and its workers do not outlive it (issue 11, items 3 and 4)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, run_cli
from .harness import Daemon


def serve_once(config, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """`serve` that is expected to refuse: it must exit by itself, and soon."""
    proc = subprocess.Popen([sys.executable, "-m", "mailseal", "-c", str(config), "serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("serve did not refuse: it is running") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line_error(result, fragment: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, err
    return err


def test_serve_never_creates_a_keystore(tmp_path):
    """A typo in [keystore] path stops the start; nothing is created."""
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:9"})
    d.cli("keys", "generate", "bob@b.test")
    d.config.write_text(d.config.read_text().replace("state/keystore.sqlite3", "state/keystore.sqlite"))
    err = one_line_error(serve_once(d.config), "does not exist")
    assert "keys init" in err and str(d.dir / "state" / "keystore.sqlite") in err
    assert not (d.dir / "state" / "keystore.sqlite").exists()
    check = run_cli("-c", str(d.config), "check-config")
    assert check.returncode == 2 and b"keystore.sqlite does not exist" in check.stderr


def test_keys_init_then_serve_logs_what_keystore_it_runs_on(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:9"})
    keystore = d.dir / "state" / "keystore.sqlite3"
    assert "is ready" in d.cli("keys", "init")
    assert keystore.exists() and (d.dir / "state" / "master.key").exists()
    d.cli("keys", "generate", "bob@b.test")
    d.cli("keys", "import", "carol@c.test", str(__import__("mailseal").age.generate().recipient()))
    d.cli("policy", "set", "@c.test", "require")
    d.cli("policy", "set", "--inbound", "@c.test", "sealed")
    # bob's encryption identity and its signing key beside it, carol's public key
    assert "exists already (3 keys, 2 policies); nothing changed" in d.cli("keys", "init")
    d.start()
    try:
        assert f"keystore {keystore}: 3 keys (2 local, 1 remote), 1 policies, 1 inbound policies" in d.log_text()
    finally:
        d.stop()


def test_the_first_keys_generate_says_it_created_the_keystore(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={})
    out = d.cli("keys", "generate", "bob@b.test")
    assert f"created keystore {d.dir / 'state' / 'keystore.sqlite3'}" in out and "back it up" in out
    assert "created keystore" not in d.cli("keys", "generate", "carol@b.test")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_serve_on_the_same_configuration_refuses(tmp_path, workers):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:9"}, server={"workers": workers})
    d.start()
    try:
        err = one_line_error(serve_once(d.config), "another `mailseal serve`")
        assert f"pid {d.proc.pid}" in err and str(d.dir / "state") in err
        assert d.proc.poll() is None
        with socket.create_connection(("127.0.0.1", d.outbound_port), timeout=5) as conn:
            assert conn.recv(100).startswith(b"220")
    finally:
        d.stop()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie holds no socket and no lock


def test_workers_exit_when_the_supervisor_is_killed(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={"next_hop": "127.0.0.1:9"}, server={"workers": 2})
    d.start()  # returns once the first worker listens
    deadline = time.monotonic() + 30
    while "ready with 2 workers" not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(d.proc.pid)
    assert len(workers) == 2, d.log_text()
    try:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(w) for w in workers), "workers kept running after their supervisor died"
        with socket.socket() as probe:  # no SO_REUSEPORT: fails while anybody listens there
            probe.bind(("127.0.0.1", d.outbound_port))
        d.start()  # the lock went with them: a restart gets the ports
        d.stop()
    finally:
        for w in workers:
            if not _gone(w):
                os.kill(w, signal.SIGKILL)
