"""The full path through real Postfix instances on each side:

  swaks -> Postfix A -> mailseal A (outbound) -> Postfix A re-injection
        -> Postfix B -> mailseal B (inbound) -> Postfix B re-injection -> Maildir
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from .harness import Daemon, free_port
from .postfix import Postfix, available

pytestmark = pytest.mark.skipif(not available(), reason="needs root and Debian's postfix (make test installs it)")
SWAKS = shutil.which("swaks")

MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: through postfix\r\n"
           b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <pf-{n}@a.test>\r\n\r\n"
           b"Confidential figures.\r\n.\r\n..dots\r\n")


def swaks(port: int, to: str, data: bytes, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / f"msg-{time.monotonic_ns()}.eml"
    path.write_bytes(data)
    return subprocess.run([SWAKS, "--server", f"127.0.0.1:{port}", "--from", "alice@a.test", "--to", to,
                           "--data", str(path), "--helo", "client.a.test"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def pf(tmp_path_factory):
    root = tmp_path_factory.mktemp("pf")
    ports = {k: free_port() for k in ("a_in", "a_re", "b_in", "b_re")}
    b_ms = Daemon(root / "ms-b", inbound={"next_hop": f"127.0.0.1:{ports['b_re']}"})
    a_ms = Daemon(root / "ms-a", outbound={"next_hop": f"127.0.0.1:{ports['a_re']}"})
    b_ms.cli("keys", "generate", "bob@b.test")
    card = root / "bob.card"
    card.write_text(b_ms.cli("keys", "export", "bob@b.test"))
    a_ms.cli("keys", "import", "bob@b.test", str(card))
    a_ms.cli("policy", "set", "@secret.test", "require")
    # A signs as a.test; B accepts mail from a.test only sealed and signed by it.
    a_ms.cli("keys", "generate", "@a.test")
    a_card = root / "a.card"
    a_card.write_text(a_ms.cli("keys", "export", "@a.test"))
    b_ms.cli("keys", "import", "@a.test", str(a_card))
    b_ms.cli("policy", "set", "--inbound", "@a.test", "signed")
    a = Postfix("a", hostname="mx.a.test", listen=ports["a_in"], reinject=ports["a_re"],
                content_filter_port=a_ms.outbound_port, relay_to=ports["b_in"])
    b = Postfix("b", hostname="mx.b.test", listen=ports["b_in"], reinject=ports["b_re"],
                content_filter_port=b_ms.inbound_port, virtual_domain="b.test")
    started = []
    try:
        for thing in (b_ms, a_ms, b, a):
            thing.start()
            started.append(thing)
        yield {"a": a, "b": b, "a_ms": a_ms, "b_ms": b_ms, "n": [0]}
    finally:
        for thing in started:
            thing.stop()
        for thing in (a, b):
            thing.cleanup()


def send(pf, tmp_path, to="bob@b.test") -> bytes:
    pf["n"][0] += 1
    message = MESSAGE.replace(b"{n}", str(pf["n"][0]).encode())
    result = swaks(pf["a"].listen, to, message, tmp_path)
    assert result.returncode == 0, result.stdout.decode()[-2000:]
    return message


def arrived(pf, message: bytes) -> list[bytes]:
    marker = message.split(b"Message-ID: ")[1].split(b"\r\n")[0]
    return [m for m in pf["b"].delivered() if marker in m]


def test_sealed_across_two_postfix_instances_and_opened_byte_for_byte(pf, tmp_path):
    message = send(pf, tmp_path)
    pf["b"].wait(lambda: arrived(pf, message), what="delivery to the Maildir")
    [delivered] = arrived(pf, message)
    # Postfix stores LF line ends and adds its own trace headers above ours;
    # below the Mailseal-Status line the message is exactly what A's Postfix
    # handed to mailseal, which ends with what swaks submitted (swaks adds one
    # CRLF of its own before the final dot).
    assert delivered.count(b"\nMailseal-Status: opened; signed-by=a.test (hybrid); serial=") == 1
    opened = delivered.split(b"\nMailseal-Status: opened; ", 1)[1].split(b"\n", 1)[1]
    assert opened.startswith(b"Received: from client.a.test")
    assert opened.endswith((message + b"\r\n").replace(b"\r\n", b"\n"))
    assert b"Subject: through postfix" in opened
    # the hop between the two companies carried it sealed
    assert "decision=pq" in pf["a_ms"].log_text()
    assert "decision=opened" in pf["b_ms"].log_text()
    # XFORWARD carried the original client through A's filter
    assert "client=localhost[127.0.0.1]" in pf["a"].log()
    pf["a"].wait(lambda: pf["a"].queued() == 0, what="A's queue to empty")


def test_mailseal_b_down_then_back_postfix_retries_and_it_arrives_once(pf, tmp_path):
    pf["b_ms"].stop()
    try:
        message = send(pf, tmp_path)
        pf["b"].wait(lambda: "status=deferred" in pf["b"].log() and pf["b"].queued() > 0,
                     what="B to defer while mailseal is down")
        assert arrived(pf, message) == []
    finally:
        pf["b_ms"].start()
    pf["b"].flush()
    pf["b"].wait(lambda: arrived(pf, message), what="delivery after mailseal came back")
    time.sleep(2)
    assert len(arrived(pf, message)) == 1


def test_reinjection_down_then_back_mailseal_answers_451(pf, tmp_path):
    a = pf["a"]
    a.write_master(reinject_enabled=False)
    a.reload()
    time.sleep(1.5)
    try:
        message = send(pf, tmp_path)
        a.wait(lambda: "4.4.1 Next hop unreachable" in a.log(), what="mailseal's 451 for the missing next hop")
        assert a.queued() > 0 and arrived(pf, message) == []
    finally:
        a.write_master(reinject_enabled=True)
        a.reload()
    time.sleep(1.5)
    a.flush()
    pf["b"].wait(lambda: arrived(pf, message), what="delivery after the re-injection port came back")
    time.sleep(2)
    assert len(arrived(pf, message)) == 1


def test_mailseal_killed_mid_transfer_the_mta_keeps_the_mail(pf, tmp_path):
    a_ms = pf["a_ms"]
    big = MESSAGE.replace(b"Confidential figures.", b"x" * 1000 + (b"\r\n" + b"y" * 998) * 30000)
    pf["n"][0] += 1
    big = big.replace(b"{n}", str(pf["n"][0]).encode())
    sender = subprocess.Popen([SWAKS, "--server", f"127.0.0.1:{pf['a'].listen}", "--from", "alice@a.test",
                               "--to", "bob@b.test", "--data", "-"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sender.communicate(big, timeout=60)
    # Kill mailseal as soon as Postfix has connected to it with the message.
    deadline = time.time() + 30
    while time.time() < deadline:
        ss = subprocess.run(["ss", "-tn", "state", "established", f"( sport = :{a_ms.outbound_port} )"],
                            capture_output=True, text=True).stdout
        if str(a_ms.outbound_port) in ss:
            break
        time.sleep(0.01)
    a_ms.kill()
    pf["a"].wait(lambda: pf["a"].queued() > 0 or arrived(pf, big), timeout=20, what="A's queue or delivery")
    if not arrived(pf, big):
        assert pf["a"].queued() > 0  # Postfix still holds the mail
    a_ms.start()
    pf["a"].flush()
    pf["b"].wait(lambda: arrived(pf, big), timeout=90, what="delivery after the restart")
    time.sleep(2)
    assert len(arrived(pf, big)) == 1


def test_require_without_a_key_never_leaves_in_clear(pf, tmp_path):
    message = send(pf, tmp_path, to="spy@secret.test")
    pf["a"].wait(lambda: "to=<spy@secret.test>" in pf["a"].log() and "status=bounced" in pf["a"].log(),
                 what="the refusal in A's log")
    bounce = [line for line in pf["a"].log().splitlines() if "to=<spy@secret.test>" in line][-1]
    assert "dsn=5.7.1" in bounce and "policy requires encryption" in bounce
    time.sleep(1)
    assert arrived(pf, message) == []
    assert "spy@secret.test" not in pf["b"].log()  # not even in clear to the next company
