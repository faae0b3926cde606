"""The full path through real Postfix instances on each side:

  swaks -> Postfix A -> mailseal A (outbound) -> Postfix A re-injection
        -> Postfix B -> mailseal B (inbound) -> Postfix B re-injection -> Maildir
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import pytest

from .harness import Daemon, Sink, free_port, wait_for_port, wait_until_closed
from .postfix import Postfix, available

pytestmark = pytest.mark.skipif(not available(), reason="needs root and Debian's postfix (make test installs it)")
SWAKS = shutil.which("swaks")

MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: through postfix\r\n"
           b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <pf-{n}@a.test>\r\n\r\n"
           b"Confidential figures.\r\n.\r\n..dots\r\n")


def swaks(port: int, to: str, data: bytes, tmp_path, sender: str = "alice@a.test") -> subprocess.CompletedProcess:
    path = tmp_path / f"msg-{time.monotonic_ns()}.eml"
    path.write_bytes(data)
    return subprocess.run([SWAKS, "--server", f"127.0.0.1:{port}", "--from", sender, "--to", to,
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


def send(pf, tmp_path, to="bob@b.test", sender="alice@a.test") -> bytes:
    return submit(pf, tmp_path, to, sender)[0]


def submit(pf, tmp_path, to="bob@b.test", sender="alice@a.test") -> tuple[bytes, str]:
    """A new message into Postfix A; (the message, A's queue id for it)."""
    pf["n"][0] += 1
    message = MESSAGE.replace(b"{n}", str(pf["n"][0]).encode())
    result = swaks(pf["a"].listen, to, message, tmp_path, sender)
    assert result.returncode == 0, result.stdout.decode()[-2000:]
    return message, re.search(rb"queued as ([0-9A-Za-z]+)", result.stdout).group(1).decode()


def settled(pf) -> None:
    """Until both queues are empty: every copy is delivered or bounced, none
    is still on its way (a message leaves A's queue only once B has it)."""
    pf["a"].wait(lambda: pf["a"].queued() == 0, what="A's queue to empty")
    pf["b"].wait(lambda: pf["b"].queued() == 0, what="B's queue to empty")


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
    settled(pf)
    assert len(arrived(pf, message)) == 1


def test_reinjection_down_then_back_mailseal_answers_451(pf, tmp_path):
    a = pf["a"]
    a.write_master(reinject_enabled=False)
    a.reload()
    wait_until_closed(a.reinject)
    try:
        message = send(pf, tmp_path)
        a.wait(lambda: "4.4.1 Next hop unreachable" in a.log(), what="mailseal's 451 for the missing next hop")
        assert a.queued() > 0 and arrived(pf, message) == []
    finally:
        a.write_master(reinject_enabled=True)
        a.reload()
    wait_for_port(a.reinject)
    a.flush()
    pf["b"].wait(lambda: arrived(pf, message), what="delivery after the re-injection port came back")
    settled(pf)
    assert len(arrived(pf, message)) == 1


def test_mailseal_killed_while_relaying_the_mta_keeps_the_mail_and_it_arrives_once(pf, tmp_path):
    """mailseal A is killed while its next hop holds the reply to the sealed
    copy: Postfix A, which got no 250, keeps the mail and its retry arrives once."""
    a, a_ms = pf["a"], pf["a_ms"]
    config = a_ms.config.read_text()
    with Sink() as hop:  # between mailseal A and A's re-injection: it answers when the test says
        hop.handler.gate = threading.Event()
        hop.handler.forward = a.reinject
        a_ms.stop()
        a_ms.config.write_text(config.replace(f"127.0.0.1:{a.reinject}", f"127.0.0.1:{hop.port}"))
        a_ms.start()
        try:
            message, qid = submit(pf, tmp_path)
            assert hop.handler.data_arrived.wait(60)  # the sealed copy is in flight
            a_ms.kill()
            assert hop.handler.abandoned.wait(30)  # and went no further
            a.wait(lambda: re.search(rf"{qid}: to=<bob@b.test>.*status=deferred", a.log()),
                   what="A to defer the message mailseal never acknowledged")
            assert a.queued() > 0 and arrived(pf, message) == []
            hop.handler.gate.set()
            a_ms.start()
            a.flush()
            pf["b"].wait(lambda: arrived(pf, message), timeout=90, what="delivery after the restart")
            settled(pf)
            assert len(arrived(pf, message)) == 1
            assert len(hop.messages) == 1
        finally:
            hop.handler.gate.set()
            a_ms.stop()
            a_ms.config.write_text(config)
            a_ms.start()


def test_require_without_a_key_never_leaves_in_clear(pf, tmp_path):
    # From the null sender: no bounce that could linger in a queue (settled()).
    message = send(pf, tmp_path, to="spy@secret.test", sender="<>")
    pf["a"].wait(lambda: "to=<spy@secret.test>" in pf["a"].log() and "status=bounced" in pf["a"].log(),
                 what="the refusal in A's log")
    bounce = [line for line in pf["a"].log().splitlines() if "to=<spy@secret.test>" in line][-1]
    assert "dsn=5.7.1" in bounce and "policy requires encryption" in bounce
    # The bounce is final: that message has nowhere else to go.
    assert arrived(pf, message) == []
    assert "spy@secret.test" not in pf["b"].log()  # not even in clear to the next company
