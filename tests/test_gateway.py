"""The gateway end to end: real SMTP clients, mailseal daemons in child
processes, real capturing SMTP servers behind them (two companies, A and B)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from mailseal import age, bundle

from .bundle_tools import decoded_parts, rebuild
from .corpus import MESSAGES
from .harness import Daemon, Sink, free_port, smtp_transaction, start_data, wait_until_closed

BOB_MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: the plan\r\n"
               b"Message-ID: <plan@a.test>\r\n\r\nThe secret plan.\r\n.\r\n..two dots\r\nFrom here\r\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """final <- B inbound <- (wire) <- A outbound; A2 outbound -> B inbound directly."""
    root = tmp_path_factory.mktemp("world")
    with Sink() as final, Sink() as wire:
        b = Daemon(root / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        for owner, extra in (("bob@b.test", []), ("carol@b.test", []), ("old@b.test", ["--classic"]),
                             ("@b.test", [])):
            b.cli("keys", "generate", owner, *extra)
        cards = {o: b.cli("keys", "export", o) for o in ("bob@b.test", "carol@b.test", "old@b.test", "@b.test")}
        a = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"})
        a2 = Daemon(root / "a2", outbound={"next_hop": f"127.0.0.1:{b.inbound_port}"})
        for daemon in (a, a2):
            for owner, card in cards.items():
                path = root / f"{owner.strip('@')}.card"
                path.write_text(card)
                daemon.cli("keys", "import", owner, str(path))
            daemon.cli("policy", "set", "@secret.test", "require")
            daemon.cli("policy", "set", "internal@b.test", "plain")
        b.start()
        a.start()
        a2.start()
        try:
            yield {"a": a, "a2": a2, "b": b, "final": final, "wire": wire, "root": root}
        finally:
            for d in (a, a2, b):
                d.stop()
            for d in (a, a2, b):
                assert "Traceback" not in d.log_text(), d.log_text()


@pytest.fixture(autouse=True)
def clean(request):
    if "world" in request.fixturenames:
        w = request.getfixturevalue("world")
        for sink in (w["final"], w["wire"]):
            sink.messages.clear()
            sink.handler.reply = "250 2.0.0 Ok: queued"
            sink.handler.rcpt_reply.clear()
            sink.handler.gate = None
    yield


def without_trace(data: bytes, unclear: bool = False) -> bytes:
    marks = b"unsigned; sender-unclear" if unclear else b"unsigned"
    assert data.startswith(b"Mailseal-Status: opened; " + marks + b"; serial=")
    return data.split(b"\r\n", 1)[1]


# --- the whole path -------------------------------------------------------------

@pytest.mark.parametrize("name", ["CRLF_PLAIN", "UTF8_HEADERS", "NESTED_MULTIPART", "LONG_LINES", "EMPTY_BODY",
                                  "ENCODED_WORDS", "FOLDED_HEADERS"])
def test_a_seals_b_opens_byte_for_byte(world, name):
    message = MESSAGES[name]
    t = smtp_transaction(world["a2"].outbound_port, "alice@a.test", ["bob@b.test"], message,
                         mail_options=("BODY=8BITMIME", "SMTPUTF8") if not message.isascii() else ())
    assert t.data[0] == 250, t
    [got] = world["final"].wait(1)
    assert without_trace(got.data) == message
    assert (got.mail_from, got.rcpts) == ("alice@a.test", ["bob@b.test"])


def test_the_wire_carries_only_sealed_mail(world):
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test"], BOB_MESSAGE)
    assert t.data[0] == 250
    [sealed] = world["wire"].wait(1)
    assert bundle.is_sealed(sealed.data)
    for secret in (b"secret plan", b"the plan", b"two dots"):
        assert secret not in sealed.data
    assert sealed.data.isascii() and b"Subject: [...]" in sealed.data
    assert b"Message-ID: <plan@a.test>" in sealed.data


def test_a_message_near_the_50mb_limit_goes_through(world):
    from .corpus import attachment_message

    message = attachment_message(36_000_000)  # 36 MB of attachment is ~49.4 MB of mail
    assert 48_000_000 < len(message) < 50_000_000
    t = smtp_transaction(world["a2"].outbound_port, "alice@a.test", ["bob@b.test"], message)
    assert t.data[0] == 250
    [got] = world["final"].wait(1, timeout=120)
    assert without_trace(got.data) == message


# --- copies ---------------------------------------------------------------------------

def test_to_cc_share_a_copy_bcc_gets_its_own_classic_apart(world):
    message = (b"From: alice@a.test\r\nTo: bob@b.test\r\nCc: carol@b.test, old@b.test\r\n"
               b"Subject: s\r\n\r\nbody\r\n")
    rcpts = ["bob@b.test", "carol@b.test", "old@b.test", "dave@b.test", "nokey@elsewhere.test"]
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", rcpts, message)
    assert t.data[0] == 250
    copies = world["wire"].wait(4)
    by_rcpts = {tuple(sorted(c.rcpts)): c for c in copies}
    assert set(by_rcpts) == {("bob@b.test", "carol@b.test"), ("old@b.test",), ("dave@b.test",),
                             ("nokey@elsewhere.test",)}
    stanza_types = {}
    for rcpts_key, copy in by_rcpts.items():
        if rcpts_key == ("nokey@elsewhere.test",):
            assert copy.data == message  # opportunistic, no key: in clear, unchanged
            continue
        key, _ = decoded_parts(copy.data)
        stanza_types[rcpts_key] = re.findall(rb"^-> (\S+)", key, re.M)
    assert stanza_types[("bob@b.test", "carol@b.test")].count(b"mlkem768x25519") == 2
    assert stanza_types[("old@b.test",)].count(b"X25519") == 1
    assert b"mlkem768x25519" not in stanza_types[("old@b.test",)]
    # dave has no key of his own: the @b.test domain key, and nobody else's
    assert stanza_types[("dave@b.test",)].count(b"mlkem768x25519") == 1
    for copy in copies:
        assert b"dave@b.test" not in copy.data  # the Bcc stays hidden


def test_plain_policy_passes_unchanged_and_a_known_key_seals_even_encrypted_mail(world):
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["internal@b.test"], BOB_MESSAGE)
    assert t.data[0] == 250
    pgp = MESSAGES["ALREADY_PGP"]
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test"], pgp)
    assert t.data[0] == 250
    got = world["wire"].wait(2)
    assert got[0].data == BOB_MESSAGE
    assert bundle.is_sealed(got[1].data)  # what a message says about itself decides nothing


def test_require_without_key_is_refused_at_rcpt_and_nothing_leaves(world):
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["spy@secret.test"], BOB_MESSAGE)
    code, text = t.rcpts[0]
    assert code == 550 and text.startswith(b"5.7.1 <spy@secret.test>: policy requires encryption")
    assert t.data is None
    # with another, acceptable recipient: the refused one gets nothing
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["spy@secret.test", "bob@b.test"], BOB_MESSAGE)
    assert t.data[0] == 250
    [copy] = world["wire"].wait(1)
    assert copy.rcpts == ["bob@b.test"] and bundle.is_sealed(copy.data)


def test_key_revoked_between_rcpt_and_data_gives_451(world, tmp_path):
    a = world["a"]
    extra = age.generate().recipient()
    a.cli("keys", "import", "x@secret.test", str(extra))
    client = smtplib.SMTP("127.0.0.1", a.outbound_port)
    try:
        client.ehlo("client.test")
        assert client.mail("alice@a.test")[0] == 250
        assert client.rcpt("x@secret.test")[0] == 250
        a.cli("keys", "revoke", "x@secret.test")
        code, text = client.data(BOB_MESSAGE.replace(b"bob@b.test", b"x@secret.test"))
    except smtplib.SMTPDataError as exc:
        code, text = exc.smtp_code, exc.smtp_error
    finally:
        client.close()
    assert code == 451 and text.startswith(b"4.7.0")
    assert world["wire"].messages == []


# --- inbound refusals ----------------------------------------------------------------

def sealed_for_bob(world, message=BOB_MESSAGE) -> bytes:
    smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test"], message)
    [copy] = world["wire"].wait(1)
    world["wire"].messages.clear()
    return copy.data


def test_replayed_bundle_is_refused(world):
    sealed = sealed_for_bob(world)
    first = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], sealed)
    again = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], sealed)
    assert first.data[0] == 250
    assert again.data[0] == 550 and again.data[1].startswith(b"5.7.0 Replayed")
    assert len(world["final"].wait(1)) == 1
    time.sleep(0.2)
    assert len(world["final"].messages) == 1


def test_tampered_bundle_is_refused(world):
    sealed = sealed_for_bob(world)
    key, payload = decoded_parts(sealed)
    tampered = rebuild(sealed, payload=payload[:-3] + bytes([payload[-3] ^ 1]) + payload[-2:])
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], tampered)
    assert t.data[0] == 550 and t.data[1].startswith(b"5.7.5")
    assert world["final"].messages == []


@pytest.mark.parametrize("age_seconds, code, fragment", [(8 * 86400, 550, b"older than the replay window"),
                                                         (-2 * 3600, 451, b"dated in the future")])
def test_bundles_outside_the_window_are_refused(world, age_seconds, code, fragment):
    """Too old is for good; from the future is a clock that is off, which gets fixed: the MTA retries."""
    from mailseal.keystore import SQLiteKeyStore, MasterKeySource
    from mailseal.addresses import parse_address

    state = world["b"].dir / "state"
    with SQLiteKeyStore(state / "keystore.sqlite3", MasterKeySource(file=state / "master.key")) as ks:
        recipient = ks.identities_for(parse_address("bob@b.test"))[0].recipient()
    sealed = bundle.seal(BOB_MESSAGE, [recipient], now=time.time() - age_seconds, bind=["bob@b.test"])
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], sealed)
    assert t.data[0] == code and fragment in t.data[1]


def test_no_local_key_and_malformed_bundle(world):
    stranger = bundle.seal(BOB_MESSAGE, [age.generate().recipient()], bind=["bob@b.test"])
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], stranger)
    assert t.data[0] == 550 and t.data[1].startswith(b"5.7.5 No local key")
    sealed = sealed_for_bob(world)
    broken = sealed[: sealed.rindex(b"--=_mailseal_")]
    t = smtp_transaction(world["b"].inbound_port, "alice@a.test", ["bob@b.test"], broken)
    assert t.data[0] == 550 and t.data[1].startswith(b"5.6.0")
    assert world["final"].messages == []


def test_forged_mailseal_headers_are_removed_from_clear_mail(world):
    forged = (b"From: mallory@evil.test\r\nMailseal-Status: opened; key=trust-me\r\n"
              b"mailseal-verified: yes\r\n  folded continuation\r\nSubject: hi\r\n\r\nbody\r\n")
    t = smtp_transaction(world["b"].inbound_port, "mallory@evil.test", ["bob@b.test"], forged)
    assert t.data[0] == 250
    [got] = world["final"].wait(1)
    assert got.data == b"From: mallory@evil.test\r\nSubject: hi\r\n\r\nbody\r\n"


# --- the next hop ---------------------------------------------------------------------

def test_next_hop_4xx_5xx_and_down(world, tmp_path):
    wire = world["wire"]
    wire.handler.reply = "452 4.3.1 Insufficient system storage"
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test"], BOB_MESSAGE)
    assert t.data[0] == 452
    wire.handler.reply = "554 5.7.1 Rejected by policy"
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test"], BOB_MESSAGE)
    assert t.data[0] == 554
    wire.handler.reply = "250 2.0.0 Ok"
    down = Daemon(tmp_path / "down", outbound={"next_hop": f"127.0.0.1:{free_port()}"})
    down.start()
    try:
        t = smtp_transaction(down.outbound_port, "alice@a.test", ["nobody@x.test"], BOB_MESSAGE)
        assert t.data[0] == 451 and t.data[1].startswith(b"4.4.1")
    finally:
        down.stop()


def test_partial_failure_is_451_in_smtp_and_per_recipient_in_lmtp(world, tmp_path):
    wire = world["wire"]
    wire.handler.rcpt_reply["carol@b.test"] = "550 5.1.1 No such user"
    message = b"From: alice@a.test\r\nTo: bob@b.test\r\n\r\nhi\r\n"
    # carol is a Bcc: her copy is separate, and refused by the next hop.
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test", "carol@b.test"], message)
    assert t.data[0] == 451
    lmtp = Daemon(tmp_path / "lmtp", outbound={"next_hop": f"127.0.0.1:{wire.port}", "protocol": "lmtp"})
    lmtp.cli("keys", "import", "bob@b.test", str(world["root"] / "bob@b.test.card"))
    lmtp.start()
    try:
        t = smtp_transaction(lmtp.outbound_port, "alice@a.test", ["bob@b.test", "carol@b.test"], message, lmtp=True)
        assert [code for code, _ in t.data] == [250, 550]
    finally:
        lmtp.stop()


def test_xforward_reaches_the_next_hop(world):
    t = smtp_transaction(world["a"].outbound_port, "alice@a.test", ["bob@b.test"], BOB_MESSAGE,
                         xforward="NAME=mua.example ADDR=192.0.2.7 PROTO=ESMTP HELO=mua.example")
    assert t.data[0] == 250
    [copy] = world["wire"].wait(1)
    assert copy.xforward == {"NAME": "mua.example", "ADDR": "192.0.2.7", "PROTO": "ESMTP", "HELO": "mua.example"}


# --- the SMTP edge ----------------------------------------------------------------------

def test_clients_outside_allowed_clients_get_554(tmp_path):
    d = Daemon(tmp_path / "closed", outbound={"next_hop": "127.0.0.1:9"},
               server={"allowed_clients": ["192.0.2.0/24"]})
    d.start()
    try:
        with socket.create_connection(("127.0.0.1", d.outbound_port), timeout=10) as s:
            banner = s.recv(200)
            assert banner.startswith(b"554 5.7.1")
            assert s.recv(200) == b""  # and the connection is closed
    finally:
        d.stop()


def test_oversize_mail_is_refused_with_552_534(tmp_path):
    with Sink() as sink:
        d = Daemon(tmp_path / "small", outbound={"next_hop": f"127.0.0.1:{sink.port}"},
                   server={"max_message_size": "100KB"})
        d.start()
        try:
            client = smtplib.SMTP("127.0.0.1", d.outbound_port)
            client.ehlo("c.test")
            assert client.esmtp_features["size"] == "100000"
            code, text = client.mail("a@a.test", ["SIZE=200000"])
            assert (code, text[:5]) == (552, b"5.3.4")
            client.rset()
            client.mail("a@a.test")
            client.rcpt("b@b.test")
            code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 150_000 + b"\r\n")
            assert (code, text[:5]) == (552, b"5.3.4")
            # the session is still in step after the refusal
            assert client.noop()[0] == 250
            client.quit()
            assert sink.messages == []
        finally:
            d.stop()


def test_long_lines_and_pipelined_quit(world):
    long_line = b"From: a@a.test\r\nTo: internal@b.test\r\n\r\n" + b"y" * 5000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", world["a"].outbound_port)) as s:
        f = start_data(s, "internal@b.test")
        f.write(long_line + b".\r\nQUIT\r\n")  # QUIT pipelined after the final dot
        f.flush()
        assert f.readline().startswith(b"250 ")
        assert f.readline().startswith(b"221")
    [got] = world["wire"].wait(1)
    assert got.data == long_line


# --- the process -------------------------------------------------------------------------

def test_sigterm_finishes_the_message_in_flight(tmp_path):
    with Sink() as sink:
        sink.handler.gate = threading.Event()  # a slow next hop: it answers DATA when the test says
        d = Daemon(tmp_path / "graceful", outbound={"next_hop": f"127.0.0.1:{sink.port}"})
        d.start()
        result = {}

        def send():
            result["t"] = smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            assert sink.handler.data_arrived.wait(30)  # the message is in flight, its 250 pending
            d.signal(signal.SIGTERM)
            wait_until_closed(d.outbound_port)  # no new connections once stopping...
            assert d.proc.poll() is None  # ...while the message in flight is still being finished
        finally:
            sink.handler.gate.set()
        sender.join(30)
        assert result["t"].data[0] == 250
        assert d.proc.wait(30) == 0
        assert len(sink.messages) == 1


def test_sighup_reloads_the_configuration(tmp_path):
    with Sink() as sink:
        d = Daemon(tmp_path / "reload", outbound={"next_hop": f"127.0.0.1:{sink.port}",
                                                   "default_policy": "opportunistic"})
        d.start()
        try:
            assert smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE).data[0] == 250
            d.config.write_text(d.config.read_text().replace('"opportunistic"', '"require"'))
            d.signal(signal.SIGHUP)
            deadline = time.time() + 10
            while "configuration reloaded" not in d.log_text() and time.time() < deadline:
                time.sleep(0.05)
            t = smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE)
            assert t.rcpts[0][0] == 550
            d.config.write_text("this is [not toml")
            d.signal(signal.SIGHUP)
            deadline = time.time() + 10
            while "reload refused" not in d.log_text() and time.time() < deadline:
                time.sleep(0.05)
            assert "reload refused" in d.log_text()
            assert smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE).rcpts[0][0] == 550
        finally:
            d.stop()


def test_sigkill_while_relaying_never_answers_250_and_the_retry_delivers_once(tmp_path):
    """Killed while the next hop has the message but has not answered: the
    MTA gets no 250 (so it keeps the mail), and its retry delivers it once."""
    message = BOB_MESSAGE.replace(b"the plan", b"killed in flight")
    with Sink() as sink:
        sink.handler.gate = threading.Event()
        d = Daemon(tmp_path / "killed", outbound={"next_hop": f"127.0.0.1:{sink.port}"})
        d.start()
        try:
            with socket.create_connection(("127.0.0.1", d.outbound_port), timeout=30) as s:
                f = start_data(s, "x@x.test")
                f.write(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")  # dot-stuffed
                f.flush()
                assert sink.handler.data_arrived.wait(30)  # relayed whole, the next hop's reply pending
                d.kill()
                try:
                    reply = f.readline()
                except OSError:
                    reply = b""
            assert reply == b""  # the connection died without any reply: the MTA keeps the mail
            assert sink.handler.abandoned.wait(30)  # and the next hop never committed it
            assert sink.messages == []
        finally:
            sink.handler.gate.set()
        d.start()  # the MTA's retry, through the restarted daemon
        try:
            t = smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], message)
        finally:
            assert d.stop() == 0
        assert t.data[0] == 250
        assert [m.data for m in sink.messages] == [message]


def test_logs_hold_no_content_or_key_material(world):
    smtp_transaction(world["a2"].outbound_port, "alice@a.test", ["bob@b.test"], BOB_MESSAGE)
    world["final"].wait(1)
    for name in ("a", "a2", "b"):
        log = world[name].log_text()
        assert "secret plan" not in log and "the plan" not in log
        assert "AGE-SECRET-KEY" not in log and "age1" not in log
    assert "decision=pq" in world["a2"].log_text()
    assert "message-id=<plan@a.test>" in world["a2"].log_text()


def _workers(d: Daemon) -> list[int]:
    return [int(p) for p in open(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read().split()]


def _listeners(port: int) -> set[int]:
    """The pids of the processes that listen on this loopback port."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def _wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise TimeoutError(what)


def test_workers_share_the_port_and_a_dead_worker_is_replaced(tmp_path):
    with Sink() as sink:
        d = Daemon(tmp_path / "workers", outbound={"next_hop": f"127.0.0.1:{sink.port}"},
                   server={"workers": 2})
        d.start()
        try:
            # Both workers ready: each listens on the one port (SO_REUSEPORT).
            _wait_for(lambda: d.log_text().count("mailseal ready (worker") == 2, "two ready workers")
            workers = _workers(d)
            assert len(workers) == 2 and _listeners(d.outbound_port) == set(workers)
            for i in range(20):
                assert smtp_transaction(d.outbound_port, "a@a.test", [f"u{i}@x.test"], BOB_MESSAGE).data[0] == 250
            os.kill(workers[0], signal.SIGKILL)
            # Replaced: a new worker, ready (so a SIGTERM now stops it cleanly), on the same port.
            _wait_for(lambda: d.log_text().count("mailseal ready (worker") == 3, "the replacement ready")
            replaced = _listeners(d.outbound_port)
            assert len(replaced) == 2 and workers[1] in replaced and workers[0] not in replaced
            assert replaced == set(_workers(d))
            for i in range(10):
                assert smtp_transaction(d.outbound_port, "a@a.test", [f"v{i}@x.test"], BOB_MESSAGE).data[0] == 250
            assert len(sink.wait(30)) == 30
        finally:
            assert d.stop() == 0
        assert "starting a new one" in d.log_text()


def test_sigterm_while_a_worker_starts_stops_it_cleanly(tmp_path):
    """A SIGTERM that reaches a worker still starting (here: waiting for its
    master key, a FIFO the test writes) stops it as cleanly as a running one."""
    d = Daemon(tmp_path / "starting", inbound={"next_hop": "127.0.0.1:9"}, server={"workers": 2})
    d.cli("keys", "generate", "bob@b.test")
    d.start()
    try:
        _wait_for(lambda: d.log_text().count("mailseal ready (worker") == 2, "two ready workers")
        master = d.dir / "state" / "master.key"
        key = master.read_bytes()
        master.unlink()
        os.mkfifo(master, 0o600)  # the next worker to start waits here for its key
        first = _workers(d)
        os.kill(first[0], signal.SIGKILL)
        writer = _wait_for(lambda: _open_for_writing(master), "the replacement reading its master key")
        [starting] = set(_workers(d)) - set(first)
        d.signal(signal.SIGTERM)
        _wait_for(lambda: _sigterm_reached(starting), "the SIGTERM forwarded to the starting worker")
        try:
            with os.fdopen(writer, "wb") as fifo:
                fifo.write(key)
        except BrokenPipeError:
            pass  # the worker died of the SIGTERM: the exit status says so
        assert d.proc.wait(30) == 0
    finally:
        d.kill()
    log = d.log_text()  # the replacement started, then stopped with the others
    assert log.count("mailseal ready (worker") == 3 and log.count("mailseal stopped") == 3, log


def _open_for_writing(fifo) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody reads it yet
        return None


def _sigterm_reached(pid: int) -> bool:
    """The process has SIGTERM pending (blocked), or has already ended."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return fields["State"].startswith("Z") or bool(pending & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("name", ["NUL_AND_CR", "HEADERS_ONLY", "NO_HEADERS", "BINARY_JUNK", "LATIN1_8BIT"])
def test_malformed_and_odd_messages_round_trip(world, name):
    message = MESSAGES[name]
    if not message.endswith(b"\r\n"):
        message += b"\r\n"  # SMTP DATA always ends a message with CRLF
    t = smtp_transaction(world["a2"].outbound_port, "alice@a.test", ["bob@b.test"], message,
                         mail_options=("BODY=8BITMIME",))
    assert t.data[0] == 250
    [got] = world["final"].wait(1)
    # Without a header block there is no From: to name the sender: marked.
    assert without_trace(got.data, unclear=name in ("NO_HEADERS", "BINARY_JUNK")) == message


def test_null_sender_bounces_pass_through(world):
    bounce = b"From: MAILER-DAEMON@a.test\r\nTo: bob@b.test\r\nSubject: Undelivered\r\n\r\nsorry\r\n"
    t = smtp_transaction(world["a"].outbound_port, "", ["bob@b.test"], bounce)
    assert t.mail[0] == 250 and t.data[0] == 250
    [copy] = world["wire"].wait(1)
    assert copy.mail_from in ("", "<>") and bundle.is_sealed(copy.data)


def test_sd_notify_readiness(tmp_path):
    import os

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    os.environ["NOTIFY_SOCKET"] = path
    try:
        d = Daemon(tmp_path / "notify", outbound={"next_hop": "127.0.0.1:9"})
        d.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        assert sock.recv(100) == b"READY=1"
    finally:
        d.stop()
        # STATUS= lines may come between (tests/test_metrics.py checks them).
        while (got := sock.recv(200)).startswith(b"STATUS="):
            pass
        assert got == b"STOPPING=1"
        sock.close()


def _self_signed(tmp_path):
    """A CA-less certificate for 127.0.0.1, and an SSL context serving it."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "next-hop.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return cert_file, context


def test_starttls_to_the_next_hop_checks_the_certificate(tmp_path):
    cert_file, context = _self_signed(tmp_path)
    with Sink(tls_context=context) as tls_sink, Sink() as plain_sink:
        trusted = Daemon(tmp_path / "trusted", outbound={
            "next_hop": f"127.0.0.1:{tls_sink.port}", "next_hop_starttls": True, "next_hop_ca_file": str(cert_file)})
        untrusted = Daemon(tmp_path / "untrusted", outbound={
            "next_hop": f"127.0.0.1:{tls_sink.port}", "next_hop_starttls": True})
        no_tls = Daemon(tmp_path / "notls", outbound={
            "next_hop": f"127.0.0.1:{plain_sink.port}", "next_hop_starttls": True})
        for d in (trusted, untrusted, no_tls):
            d.start()
        try:
            assert smtp_transaction(trusted.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE).data[0] == 250
            [got] = tls_sink.wait(1)
            assert got.tls
            t = smtp_transaction(untrusted.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE)
            assert t.data[0] == 451 and t.data[1].startswith(b"4.7.5")
            t = smtp_transaction(no_tls.outbound_port, "a@a.test", ["x@x.test"], BOB_MESSAGE)
            assert t.data[0] == 451 and t.data[1].startswith(b"4.7.4")
            time.sleep(0.2)
            assert len(tls_sink.messages) == 1 and plain_sink.messages == []
        finally:
            for d in (trusted, untrusted, no_tls):
                d.stop()
