"""The inbound gateway's replay claims end to end: a real SMTP client, the
daemon (in a child process, or in this one where the test must hold its
fsync), a real SMTP sink as the next hop, and the MTA's retry after a
crash, a disconnect or a refusal. Every message is counted: none lost."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import smtplib
import socket
import threading

import pytest

from mailseal import bundle, config
from mailseal.addresses import parse_address
from mailseal.gateway.relay import dot_stuff
from mailseal.gateway.server import Gateway
from mailseal.keystore import MasterKeySource, SQLiteKeyStore
from mailseal.replay import ReplayCache, Window

from .harness import Daemon, Sink, smtp_transaction, start_data

MESSAGE = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: once\r\n\r\nDelivered once, lost never.\r\n"


def seal_for(daemon: Daemon, owner: str = "bob@b.test", bind: tuple[str, ...] = ("bob@b.test",)) -> bytes:
    state = daemon.dir / "state"
    with SQLiteKeyStore(state / "keystore.sqlite3", MasterKeySource(file=state / "master.key")) as ks:
        recipient = ks.identities_for(parse_address(owner))[0].recipient()
    return bundle.seal(MESSAGE, [recipient], bind=bind)


def serial_of(data: bytes) -> str:
    return re.search(rb"Mailseal-Serial: ([0-9a-f]{32})", data).group(1).decode()


def delivered_serials(sink: Sink) -> list[str]:
    return sorted(re.match(rb"Mailseal-Status: opened; [^;\r\n]*; serial=([0-9a-f]{32});", m.data).group(1).decode()
                  for m in sink.messages)


def send(port: int, sealed: bytes, rcpts=("bob@b.test",)):
    """What the MTA sees: the transaction, or the exception of a connection that died."""
    try:
        return smtp_transaction(port, "alice@a.test", list(rcpts), sealed)
    except (smtplib.SMTPException, OSError) as exc:
        return exc


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with Sink() as final:
        b = Daemon(tmp_path_factory.mktemp("replay-gw") / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        b.cli("keys", "generate", "bob@b.test")
        b.start()
        try:
            yield b, final
        finally:
            b.stop()
            assert "Traceback" not in b.log_text(), b.log_text()


@pytest.fixture()
def b(gateway):
    daemon, final = gateway
    final.messages.clear()
    final.handler.reply = "250 2.0.0 Ok: queued"
    final.handler.data_arrived.clear()
    final.handler.abandoned.clear()
    yield daemon, final
    if final.handler.gate is not None:
        final.handler.gate.set()
    final.handler.gate = None


def test_the_same_mailbox_named_twice_is_claimed_once(b):
    daemon, final = b
    sealed = seal_for(daemon, bind=("bob@b.test", "bob+x@b.test"))
    t = smtp_transaction(daemon.inbound_port, "alice@a.test", ["bob@b.test", "Bob+x@B.TEST"], sealed)
    assert t.data[0] == 250, t  # not refused as its own replay
    [got] = final.wait(1)
    assert got.rcpts == ["bob@b.test", "Bob+x@B.TEST"]
    for spelling in ("BOB@b.test", "bob+x@b.test"):  # one mailbox, however it is spelled
        again = smtp_transaction(daemon.inbound_port, "alice@a.test", [spelling], sealed)
        assert again.data[0] == 550 and again.data[1].startswith(b"5.7.0 Replayed")


def test_a_second_copy_while_the_first_is_relayed_gets_a_temporary_refusal(b):
    daemon, final = b
    sealed = seal_for(daemon)
    final.handler.gate = threading.Event()  # a slow next hop
    first = {}
    sender = threading.Thread(target=lambda: first.update(t=send(daemon.inbound_port, sealed)))
    sender.start()
    try:
        assert final.handler.data_arrived.wait(30)
        second = send(daemon.inbound_port, sealed)
        assert second.data[0] == 451 and second.data[1].startswith(b"4.7.0 The same sealed message is being")
    finally:
        final.handler.gate.set()
        sender.join(60)
    assert first["t"].data[0] == 250
    third = send(daemon.inbound_port, sealed)
    assert third.data[0] == 550 and third.data[1].startswith(b"5.7.0 Replayed")
    assert delivered_serials(final) == [serial_of(sealed)]


@pytest.mark.parametrize("refusal", ["451 4.3.0 Try again later", "554 5.7.1 Not now"])
def test_a_refusal_by_the_next_hop_leaves_the_retry_free(b, refusal):
    daemon, final = b
    sealed = seal_for(daemon)
    final.handler.reply = refusal
    t = send(daemon.inbound_port, sealed)
    assert t.data[0] == int(refusal[:3])
    final.handler.reply = "250 2.0.0 Ok: queued"
    assert send(daemon.inbound_port, sealed).data[0] == 250
    assert delivered_serials(final) == [serial_of(sealed)]


def test_smtp_partial_failure_at_the_next_hop_loses_no_recipient_on_the_retry(b):
    """One SMTP reply covers the transaction: bob accepted, carol refused for
    now by the next hop answers 451, and the MTA retries both. The retry must
    reach carol (bob may get a duplicate), not meet bob's claim as a replay."""
    daemon, final = b
    daemon.cli("keys", "generate", "carol@b.test")
    state = daemon.dir / "state"
    with SQLiteKeyStore(state / "keystore.sqlite3", MasterKeySource(file=state / "master.key")) as ks:
        keys = [ks.identities_for(parse_address(o))[0].recipient() for o in ("bob@b.test", "carol@b.test")]
    sealed = bundle.seal(MESSAGE, keys, bind=("bob@b.test", "carol@b.test"))
    final.handler.rcpt_reply["carol@b.test"] = "452 4.2.2 Mailbox full"
    try:
        first = send(daemon.inbound_port, sealed, ("bob@b.test", "carol@b.test"))
        assert first.data[0] == 451, first
        assert [m.rcpts for m in final.messages] == [["bob@b.test"]]
    finally:
        final.handler.rcpt_reply.clear()
    retry = send(daemon.inbound_port, sealed, ("bob@b.test", "carol@b.test"))
    assert retry.data[0] == 250, retry
    assert "carol@b.test" in final.messages[-1].rcpts
    assert delivered_serials(final) == [serial_of(sealed)] * 2  # bob's duplicate is the allowed worst case


def test_a_client_gone_while_the_relay_is_in_flight_gets_its_retry_delivered(b):
    daemon, final = b
    sealed = seal_for(daemon)
    final.handler.gate = threading.Event()  # a slow next hop
    with socket.create_connection(("127.0.0.1", daemon.inbound_port), timeout=30) as sock:
        f = start_data(sock, "bob@b.test")
        f.write(b"".join(dot_stuff([sealed])) + b".\r\n")
        f.flush()
        assert final.handler.data_arrived.wait(30)  # opened, claimed, and on its way
        f.close()
        sock.shutdown(socket.SHUT_RDWR)
    final.handler.gate.set()  # the first relay may still complete: then the retry is a duplicate
    retry = send(daemon.inbound_port, sealed)
    assert retry.data[0] == 250, retry  # a duplicate at worst, never a loss
    assert serial_of(sealed) in delivered_serials(final)
    assert set(delivered_serials(final)) == {serial_of(sealed)}


def test_sigkill_while_relaying_then_the_mta_retry_is_delivered(tmp_path):
    """The daemon dies between its claim and the next hop's answer (three
    times): each retry after the restart is delivered, not refused as a replay."""
    with Sink() as final:
        b = Daemon(tmp_path / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        b.cli("keys", "generate", "bob@b.test")
        b.start()
        try:
            sent = []
            for _ in range(3):
                calm = seal_for(b)
                assert send(b.inbound_port, calm).data[0] == 250
                sealed = seal_for(b)
                sent += [calm, sealed]
                final.handler.data_arrived.clear()
                final.handler.abandoned.clear()
                final.handler.gate = threading.Event()  # a slow next hop
                first = {}
                sender = threading.Thread(target=lambda s=sealed: first.update(t=send(b.inbound_port, s)))
                sender.start()
                assert final.handler.data_arrived.wait(30)  # the relay is in flight
                b.kill()
                sender.join(30)
                assert isinstance(first["t"], (smtplib.SMTPException, OSError))  # no reply: the MTA keeps it
                assert final.handler.abandoned.wait(30)  # and the next hop never committed it
                final.handler.gate = None
                b.start()
                retry = send(b.inbound_port, sealed)
                assert retry.data[0] == 250, retry
            # Every message arrived, each once (no killed relay was ever accepted by the sink).
            assert delivered_serials(final) == sorted(serial_of(s) for s in sent)
        finally:
            if final.handler.gate is not None:
                final.handler.gate.set()
            b.stop()
        assert "taking over a claim left pending by dead instance" in b.log_text()


class InProcessGateway:
    """`mailseal serve`'s Gateway on an event loop of this process, with a replay cache made by the test."""

    def __init__(self, cfg: config.Config, cache: ReplayCache) -> None:
        self.cfg, self.cache = cfg, cache

    def __enter__(self) -> InProcessGateway:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()

        async def start() -> Gateway:
            gateway = Gateway(self.cfg, replay_cache=self.cache)
            await gateway.start()
            return gateway

        self.gateway = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(90)
        self.gateway.ctx.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


class _Abandoned(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "abandoned" in record.getMessage():
            self.event.set()


def test_a_client_gone_during_the_claim_gets_its_retry_delivered(tmp_path):
    """The client sends the final dot and disconnects while the claim is
    being made durable: the MTA's retry is delivered, not refused."""
    entered, go, armed = threading.Event(), threading.Event(), [False]

    def fsync(fd: int) -> None:
        if armed[0]:
            armed[0] = False
            entered.set()
            go.wait(60)
        os.fsync(fd)

    abandoned = _Abandoned()
    logging.getLogger("mailseal.replay").addHandler(abandoned)
    with Sink() as final:
        b = Daemon(tmp_path / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        b.cli("keys", "generate", "bob@b.test")
        sealed = seal_for(b)
        cfg = config.load(b.config)
        cache = ReplayCache(cfg.server.state_dir / "replay.sqlite3",
                            Window(cfg.inbound.replay_window, cfg.inbound.max_clock_skew), fsync=fsync)
        try:
            with InProcessGateway(cfg, cache):
                with socket.create_connection(("127.0.0.1", b.inbound_port), timeout=30) as sock:
                    f = start_data(sock, "bob@b.test")
                    armed[0] = True
                    f.write(b"".join(dot_stuff([sealed])) + b".\r\n")
                    f.flush()
                    assert entered.wait(30)  # the claim is written, its fsync under way
                    f.close()
                    sock.shutdown(socket.SHUT_RDWR)
                assert abandoned.event.wait(30)  # the gateway saw the client go
                go.set()
                retry = send(b.inbound_port, sealed)
                assert retry.data[0] == 250, retry
                assert delivered_serials(final) == [serial_of(sealed)]
        finally:
            go.set()
            logging.getLogger("mailseal.replay").removeHandler(abandoned)
