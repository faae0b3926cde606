"""The shipped Postfix recipe itself (config/postfix/, docs/OPERATIONS.md 4),
on two hosts that both send and receive: a.test and b.test, each a private
Postfix built from the shipped files plus its mailseal built from
config/mailseal.production.toml. A user sends as users do (port 587,
`sendmail`, and port 25 by mistake); an observer on the wire between the two
hosts must never see the text of mail for a `require` recipient."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from .postfix import available
from .postfix_recipe import RecipeHost, Wire

pytestmark = pytest.mark.skipif(not available(), reason="needs root and Debian's postfix (make test installs it)")
SWAKS = shutil.which("swaks")


def message(n: int, to: str) -> bytes:
    return (f"From: Alice <alice@a.test>\r\nTo: <{to}>\r\nSubject: recipe {n}\r\n"
            f"Message-ID: <recipe-{n}@a.test>\r\n\r\nSECRET-{n} quarterly figures\r\n").encode()


def swaks(port: int, to: str, data: bytes, tmp_path, sender: str = "alice@a.test") -> subprocess.CompletedProcess:
    path = tmp_path / f"msg-{time.monotonic_ns()}.eml"
    path.write_bytes(data)
    return subprocess.run([SWAKS, "--server", f"127.0.0.1:{port}", "--from", sender, "--to", to,
                           "--data", str(path), "--helo", "client.a.test"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def hosts():
    # a.test reaches "the internet" (b.test's port 25) through a recording wire.
    b_internet = Wire(0)  # target set once b.test's port is known
    a = RecipeHost("a.test", internet=b_internet.port, aliases={"fwd@a.test": "bob@b.test"})
    b = RecipeHost("b.test", internet=a.ports["smtp"])
    b_internet.target = b.ports["smtp"]
    b.mailseal.cli("keys", "generate", "@b.test")
    card = b.base / "b.card"
    card.write_text(b.mailseal.cli("keys", "export", "@b.test"))
    a.mailseal.cli("keys", "import", "@b.test", str(card))
    a.mailseal.cli("policy", "set", "@b.test", "require")
    a.mailseal.cli("keys", "generate", "@a.test")  # a.test signs what its users send
    a_card = a.base / "a.card"
    a_card.write_text(a.mailseal.cli("keys", "export", "@a.test"))
    b.mailseal.cli("keys", "import", "@a.test", str(a_card))
    started = []
    try:
        for host in (b, a):
            host.start()
            started.append(host)
        yield {"a": a, "b": b, "wire": b_internet}
    finally:
        for host in started:
            host.stop()
        b_internet.close()
        for host in (a, b):
            host.cleanup()


def arrives(host: RecipeHost, marker: bytes, sender: RecipeHost | None = None, timeout: float = 90.0) -> bytes:
    found = []
    try:
        host.wait(lambda: found.extend(m for m in host.delivered() if marker in m) or found, timeout,
                  f"{marker!r} delivered at {host.domain}")
    except TimeoutError as exc:
        if sender is None:
            raise
        raise TimeoutError(f"{exc}\n--- sender {sender.domain} log:\n{sender.log()[-4000:]}\n"
                           f"{sender.mailseal.log_text()[-2000:]}") from None
    return found[0]


def assert_sealed_on_the_wire(wire: Wire, marker: bytes) -> None:
    assert marker not in wire.captured, "plaintext of a require recipient's mail crossed the internet"
    assert b"multipart/encrypted" in wire.captured


def test_submission_on_587_is_sealed_and_opened(hosts, tmp_path):
    out = swaks(hosts["a"].ports["submission"], "bob@b.test", message(1, "bob@b.test"), tmp_path)
    assert out.returncode == 0, out.stdout.decode()[-2000:]
    got = arrives(hosts["b"], b"SECRET-1", hosts["a"])
    assert got.startswith(b"Mailseal-Status: opened") or b"\nMailseal-Status: opened" in got
    assert_sealed_on_the_wire(hosts["wire"], b"SECRET-1")


def test_sendmail_is_sealed_and_opened(hosts):
    out = hosts["a"].sendmail("alice@a.test", "bob@b.test", message(2, "bob@b.test"))
    assert out.returncode == 0, out.stderr
    arrives(hosts["b"], b"SECRET-2", hosts["a"])
    assert_sealed_on_the_wire(hosts["wire"], b"SECRET-2")


def test_port_25_relays_nothing_not_even_for_local_clients(hosts, tmp_path):
    before = bytes(hosts["wire"].captured)
    out = swaks(hosts["a"].ports["smtp"], "bob@b.test", message(3, "bob@b.test"), tmp_path)
    assert out.returncode != 0
    assert b"<** 554 5.7.1" in out.stdout and b"Relay access denied" in out.stdout, out.stdout.decode()[-2000:]
    assert b"SECRET-3" not in hosts["wire"].captured[len(before):]


def test_a_forward_from_the_internet_to_a_require_recipient_is_sealed(hosts, tmp_path):
    """b.test sends in clear to fwd@a.test, which a.test forwards (a virtual
    alias, expanded after the inbound filter) to bob@b.test: the copy that
    leaves a.test is sealed like any other."""
    out = swaks(hosts["b"].ports["submission"], "fwd@a.test", message(4, "fwd@a.test"), tmp_path)
    assert out.returncode == 0, out.stdout.decode()[-2000:]
    arrives(hosts["b"], b"SECRET-4", hosts["a"])
    assert_sealed_on_the_wire(hosts["wire"], b"SECRET-4")


def test_local_mail_stays_in_clear_and_is_delivered(hosts, tmp_path):
    out = swaks(hosts["a"].ports["submission"], "carol@a.test", message(5, "carol@a.test"), tmp_path)
    assert out.returncode == 0, out.stdout.decode()[-2000:]
    got = arrives(hosts["a"], b"SECRET-5")
    assert b"SECRET-5" not in hosts["wire"].captured and b"Mailseal-Status" not in got


def trace(delivered: bytes) -> bytes:
    [found] = re.findall(rb"(?m)^Mailseal-Status: ([^\r\n]*)", delivered)
    return found


def test_submission_on_587_arrives_signed_by_the_senders_domain(hosts, tmp_path):
    out = swaks(hosts["a"].ports["submission"], "bob@b.test", message(6, "bob@b.test"), tmp_path)
    assert out.returncode == 0, out.stdout.decode()[-2000:]
    got = arrives(hosts["b"], b"SECRET-6", hosts["a"])
    assert trace(got).startswith(b"opened; signed-by=a.test (hybrid); serial=")


def test_mail_from_outside_forwarded_by_an_alias_is_never_signed(hosts, tmp_path):
    """An outsider writes MAIL FROM:<ceo@a.test> to a.test's alias that
    forwards to b.test: a.test seals the forward but does not sign it, so
    b.test never reads it as a.test's."""
    out = swaks(hosts["a"].ports["smtp"], "fwd@a.test", message(7, "fwd@a.test"), tmp_path, sender="ceo@a.test")
    assert out.returncode == 0, out.stdout.decode()[-2000:]
    got = arrives(hosts["b"], b"SECRET-7", hosts["a"])
    assert trace(got).startswith(b"opened; unsigned; serial=")
    assert_sealed_on_the_wire(hosts["wire"], b"SECRET-7")
