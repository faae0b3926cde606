"""[metrics]: the Prometheus endpoint and /health, one process and several
workers; systemd's watchdog, STATUS= and reload completion."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from mailseal import age, bundle

from .conftest import run_cli
from .harness import Daemon, Sink, free_port, smtp_transaction, wait_for_port
from .test_quarantine_release import one_line

MESSAGE = (b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: metrics\r\n"
           b"Message-ID: <metrics@a.test>\r\n\r\ncounted, never labelled\r\n")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == {k: str(v) for k, v in labels.items()}:
            return float(match.group(3))
    return None


def test_counters_gauges_and_health_of_one_process(tmp_path):
    metrics_port = free_port()
    wire = Sink().__enter__()
    with Sink() as final:
        d = Daemon(tmp_path / "g", outbound={"next_hop": f"127.0.0.1:{wire.port}"},
                   inbound={"next_hop": f"127.0.0.1:{final.port}"})
        with open(d.config, "a") as config:
            config.write(f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        d.cli("keys", "generate", "bob@b.test", "--expires", "30d")
        card = tmp_path / "bob.card"
        card.write_text(d.cli("keys", "export", "bob@b.test"))
        d.cli("keys", "import", "bob@b.test", str(card), "--expires", "10d")  # its own mail, for the test
        d.cli("policy", "set", "@secret.test", "require")
        d.start()
        try:
            code, body = get(metrics_port, "/health")
            assert code == 200 and json.loads(body) == {"status": "ok", "checks": {
                "keystore": "ok", "replay_cache": "ok", "inbound_next_hop": "ok", "outbound_next_hop": "ok"}}
            assert smtp_transaction(d.outbound_port, "alice@a.test", ["bob@b.test"], MESSAGE).data[0] == 250
            assert smtp_transaction(d.outbound_port, "alice@a.test", ["x@secret.test"], MESSAGE).rcpts[0][0] == 550
            [sealed] = wire.wait(1)
            assert smtp_transaction(d.inbound_port, "alice@a.test", ["bob@b.test"], sealed.data).data[0] == 250
            assert smtp_transaction(d.inbound_port, "alice@a.test", ["bob@b.test"], sealed.data).data[0] == 550
            assert smtp_transaction(d.inbound_port, "alice@a.test", ["bob@b.test"], MESSAGE).data[0] == 250
            code, text = get(metrics_port, "/metrics")
            assert code == 200
            assert sample(text, "mailseal_messages_total", direction="outbound", decision="sealed") == 1
            assert sample(text, "mailseal_messages_total", direction="inbound", decision="opened") == 1
            assert sample(text, "mailseal_messages_total", direction="inbound", decision="clear") == 1
            assert sample(text, "mailseal_messages_total", direction="inbound", decision="refused") == 1
            assert sample(text, "mailseal_refusals_total", direction="inbound", reason="replayed") == 1
            assert sample(text, "mailseal_refusals_total", direction="outbound", reason="policy-require") == 1
            assert sample(text, "mailseal_message_seconds_count", direction="inbound") == 3
            assert sample(text, "mailseal_replay_cache_entries") == 1
            assert 29 * 86400 < sample(text, "mailseal_key_expiry_seconds", scope="local") <= 30 * 86400
            assert 9 * 86400 < sample(text, "mailseal_key_expiry_seconds", scope="remote") <= 10 * 86400
            assert "bob@" not in text and "secret.test" not in text and "age1" not in text  # no address labels

            wire.handler.reply = "451 4.3.0 try later"
            assert smtp_transaction(d.outbound_port, "alice@a.test", ["bob@b.test"], MESSAGE).data[0] == 451
            code, text = get(metrics_port, "/metrics")
            assert sample(text, "mailseal_next_hop_errors_total", direction="outbound", **{"class": "4xx"}) == 1
            assert get(metrics_port, "/nothing")[0] == 404
        except BaseException:
            d.stop()
            wire.__exit__()
            raise
        # The outbound next hop goes away: /health says so, with 503.
        wire.__exit__()
        try:
            code, body = get(metrics_port, "/health")
            report = json.loads(body)
            assert code == 503 and report["status"] == "fail"
            assert report["checks"]["outbound_next_hop"].startswith(f"next hop 127.0.0.1:{wire.port}: ")
            assert report["checks"]["keystore"] == "ok" and report["checks"]["inbound_next_hop"] == "ok"
        finally:
            d.stop()


def test_the_forward_listener_is_counted_as_its_own_direction(tmp_path):
    metrics_port, forward_port = free_port(), free_port()
    with Sink() as wire, Sink() as final:
        d = Daemon(tmp_path / "g", outbound={"next_hop": f"127.0.0.1:{wire.port}",
                                             "forward_listen": f"127.0.0.1:{forward_port}"},
                   inbound={"next_hop": f"127.0.0.1:{final.port}"})
        with open(d.config, "a") as config:
            config.write(f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        d.cli("keys", "generate", "bob@b.test")
        card = tmp_path / "bob.card"
        card.write_text(d.cli("keys", "export", "bob@b.test"))
        d.cli("keys", "import", "bob@b.test", str(card))
        d.start()
        try:
            wait_for_port(forward_port)
            assert smtp_transaction(forward_port, "alice@a.test", ["bob@b.test"], MESSAGE).data[0] == 250
            [sealed] = wire.wait(1)
            assert b"multipart/encrypted" in sealed.data
            code, text = get(metrics_port, "/metrics")
            assert code == 200
            assert sample(text, "mailseal_messages_total", direction="forward", decision="sealed") == 1
            assert sample(text, "mailseal_messages_total", direction="outbound", decision="sealed") == 0
            d.cli("policy", "set", "--inbound", "@c.test", "signed")
            unclear = b"Sender: ceo@a.test\r\nTo: bob@b.test\r\n\r\nno From\r\n"
            assert smtp_transaction(d.inbound_port, "x@evil.test", ["bob@b.test"], unclear).data[0] == 550
            code, text = get(metrics_port, "/metrics")
            assert sample(text, "mailseal_refusals_total", direction="inbound", reason="sender-unclear") == 1
        finally:
            d.stop()


def test_several_workers_give_one_view_that_survives_a_worker(tmp_path):
    metrics_port = free_port()
    with Sink() as sink:
        d = Daemon(tmp_path / "w", outbound={"next_hop": f"127.0.0.1:{sink.port}"}, server={"workers": 2})
        with open(d.config, "a") as config:
            config.write(f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        d.cli("keys", "import", "bob@b.test", str(age.generate().recipient()))
        d.start()
        try:
            for i in range(12):
                assert smtp_transaction(d.outbound_port, "a@a.test", ["bob@b.test"], MESSAGE).data[0] == 250
            code, text = get(metrics_port, "/metrics")
            assert code == 200
            assert sample(text, "mailseal_messages_total", direction="outbound", decision="sealed") == 12
            children = [int(p) for p in open(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read().split()]
            assert len(children) == 2
            os.kill(children[0], signal.SIGKILL)
            deadline = time.monotonic() + 30  # the supervisor replaces it
            while time.monotonic() < deadline:
                now = [int(p) for p in open(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read().split()]
                if len(now) == 2 and children[0] not in now:
                    break
                time.sleep(0.05)
            wait_for_port(d.outbound_port)
            for i in range(5):
                assert smtp_transaction(d.outbound_port, "a@a.test", ["bob@b.test"], MESSAGE).data[0] == 250
            code, text = get(metrics_port, "/metrics")
            # The dead worker's count is still in the sum.
            assert sample(text, "mailseal_messages_total", direction="outbound", decision="sealed") == 17
            assert get(metrics_port, "/health")[0] == 200
        finally:
            assert d.stop() == 0


def test_the_endpoint_is_loopback_only_unless_allowed(tmp_path):
    d = Daemon(tmp_path / "c", outbound={"next_hop": "127.0.0.1:9"})
    d.cli("keys", "generate", "@a.test")
    base = d.config.read_text()
    d.config.write_text(base + '\n[metrics]\nlisten = "0.0.0.0:9125"\n')
    for command in (("check-config",), ("serve",)):
        result = run_cli("-c", str(d.config), *command)
        assert result.returncode == 2 and "not a loopback address" in one_line(result)
    d.config.write_text(base + '\n[metrics]\nlisten = "0.0.0.0:9125"\nallow_non_loopback = true\n')
    assert run_cli("-c", str(d.config), "check-config").returncode == 0
    d.config.write_text(base + '\n[metrics]\nlisten = "[::1]:9125"\nport = 3\n')
    result = run_cli("-c", str(d.config), "check-config")
    assert result.returncode == 2 and "[metrics]: unknown setting(s) port" in one_line(result)


class Notifications:
    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = str(path)

    def until(self, predicate, timeout: float = 30.0) -> list[str]:
        """Datagrams received until one satisfies predicate (all of them, in order)."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            seen.append(message)
            if predicate(message):
                return seen
        raise AssertionError(f"no such notification; got {seen}")


@pytest.mark.parametrize("workers", [1, 2])
def test_watchdog_status_and_reload_completion(tmp_path, monkeypatch, workers):
    notes = Notifications(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", notes.path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # a ping each second
    with Sink() as sink:
        d = Daemon(tmp_path / "n", outbound={"next_hop": f"127.0.0.1:{sink.port}"}, server={"workers": workers})
        d.cli("keys", "import", "bob@b.test", str(age.generate().recipient()))
        d.start()
        try:
            notes.until(lambda m: "READY=1" in m.split("\n"))
            notes.until(lambda m: "WATCHDOG=1" in m.split("\n"))
            assert smtp_transaction(d.outbound_port, "a@a.test", ["bob@b.test"], MESSAGE).data[0] == 250
            notes.until(lambda m: "STATUS=1 sealed, 0 opened, 0 refused since start" in m)
            d.signal(signal.SIGHUP)
            got = notes.until(lambda m: m == "READY=1")
            assert any(re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", m) for m in got), got
            assert "configuration reloaded" in d.log_text()
            if workers > 1:
                # A stalled worker loop stops the supervisor's pings.
                children = [int(p) for p in open(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read().split()]
                os.kill(children[0], signal.SIGSTOP)
                try:
                    time.sleep(4)  # three heartbeats missed
                    notes.sock.settimeout(0)
                    while True:  # drop what came before the stall showed
                        try:
                            notes.sock.recv(4096)
                        except BlockingIOError:
                            break
                    with pytest.raises(AssertionError):
                        notes.until(lambda m: "WATCHDOG=1" in m.split("\n"), timeout=3)
                finally:
                    os.kill(children[0], signal.SIGCONT)
                notes.until(lambda m: "WATCHDOG=1" in m.split("\n"))
        finally:
            d.stop()
            notes.sock.close()
