"""The SMTP client to the next hop, against next hops that misbehave.

Every misbehaving next hop here is a real SMTP server on loopback (a small
asyncio server in its own thread) that lies where a test tells it to: that
is what the relay must survive. Fan-out runs against the harness's aiosmtpd
sink, counting the connections it sees.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import ssl
import smtplib
import threading
import time
from pathlib import Path

import pytest

from mailseal import config
from mailseal.gateway import replies
from mailseal.gateway.relay import Envelope, SMTPNextHop, dot_stuff, next_hop_for

from .conftest import run_cli
from .harness import Daemon, Sink, smtp_transaction
from .test_gateway import _self_signed

MESSAGE = b"From: a@a.test\r\nTo: b@b.test\r\nSubject: hi\r\n\r\nbody\r\n"
OK_250 = b"250 2.0.0 Ok\r\n"
NO_RECIPIENTS = b"554 5.5.1 Error: no valid recipients\r\n"


class ScriptedHop:
    """A real SMTP server on a free loopback port, in its own thread.

    Honest by default. `lies` replaces its reply at one step ("greeting",
    "EHLO", "STARTTLS", "MAIL", "RCPT", "DATA", "dot", "BDAT", "RSET") with
    raw bytes, written in one piece. DATA is read strictly as RFC 5321 4.5.2
    says: lines end at CRLF only, a line "." ends the data, a leading dot is
    removed; the raw bytes are kept too. `hold` makes it wait before its
    reply to the final dot until the test sets `release`.
    """

    def __init__(self, *, extensions: tuple[str, ...] = ("PIPELINING",), lies: dict | None = None,
                 tls: ssl.SSLContext | None = None, hold: bool = False) -> None:
        self.extensions, self.lies, self.tls, self.hold = extensions, dict(lies or {}), tls, hold
        self.connections = self.handshakes = 0
        self.commands: list[str] = []
        self.messages: list[tuple[list[str], bytes, bytes]] = []  # (rcpts, content, raw)
        self.data_seen = threading.Event()
        self.release = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ScriptedHop:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()

        async def stop():
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass  # the relay hung up on us: what several tests want
        finally:
            writer.close()

    def _say(self, writer: asyncio.StreamWriter, step: str, honest: bytes) -> bytes:
        reply = self.lies.get(step, honest)
        writer.write(reply)
        return reply

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._say(writer, "greeting", b"220 hop.test ESMTP\r\n")
        rcpts: list[str] = []
        chunks: list[bytes] = []
        secure = False
        while line := await reader.readline():
            command = line.rstrip(b"\r\n").decode("utf-8", "replace")
            self.commands.append(command)
            verb, _, arg = command.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                offered = list(self.extensions) + (["STARTTLS"] if self.tls and not secure else [])
                self._say(writer, "EHLO", "".join(f"250-{e}\r\n" for e in ["hop.test", *offered[:-1]]).encode()
                          + f"250 {offered[-1] if offered else 'ok'}\r\n".encode())
            elif verb == "STARTTLS":
                self._say(writer, "STARTTLS", b"220 2.0.0 Ready to start TLS\r\n")
                await writer.drain()
                await writer.start_tls(self.tls)
                self.handshakes += 1
                secure = True
            elif verb == "MAIL":
                rcpts = []
                self._say(writer, "MAIL", b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT":
                if self._say(writer, "RCPT", b"250 2.1.5 Ok\r\n").startswith(b"2"):
                    rcpts.append(arg.partition(":")[2].strip("<>"))
            elif verb == "RSET":
                rcpts = []
                self._say(writer, "RSET", OK_250)
            elif verb == "DATA":
                go_ahead = b"354 End data with <CR><LF>.<CR><LF>\r\n" if rcpts else NO_RECIPIENTS
                if self._say(writer, "DATA", go_ahead).startswith(b"354"):
                    raw, content = await self._read_data(reader)
                    await self._finish(writer, "dot", rcpts, content, raw)
            elif verb == "BDAT":
                size, _, last = arg.partition(" ")
                chunks.append(await reader.readexactly(int(size)))
                if last.upper() == "LAST":
                    content = b"".join(chunks)
                    chunks = []
                    await self._finish(writer, "BDAT", rcpts, content, content)
                else:
                    writer.write(OK_250)
            elif verb == "XFORWARD":
                writer.write(OK_250)
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                return
            else:
                writer.write(b"502 5.5.2 Not implemented\r\n")

    @staticmethod
    async def _read_data(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        raw, content = [], []
        while True:
            line = await reader.readuntil(b"\r\n")  # a line ends at CRLF, nowhere else
            raw.append(line)
            if line == b".\r\n":
                return b"".join(raw), b"".join(content)
            content.append(line[1:] if line.startswith(b".") else line)

    async def _finish(self, writer, step: str, rcpts: list[str], content: bytes, raw: bytes) -> None:
        self.data_seen.set()
        if self.hold:
            await asyncio.to_thread(self.release.wait, 60)
        reply = self.lies.get(step, OK_250 if rcpts else NO_RECIPIENTS)
        if reply.startswith(b"2"):
            self.messages.append((list(rcpts), content, raw))  # before the reply: the test reads it after
        writer.write(reply)


def deliver(hop: SMTPNextHop, *envelopes: Envelope) -> list[dict[str, replies.Reply]]:
    """Deliver each envelope in turn on one relay client, then close it."""
    async def run():
        try:
            return [await hop.deliver(e) for e in envelopes]
        finally:
            await hop.close()

    return asyncio.run(run())


def envelope(data=MESSAGE, rcpts=("b@b.test",)) -> Envelope:
    return Envelope("a@a.test", rcpts, data)


# --- issue 8 item 12: replies out of protocol -----------------------------------

LIES = [
    # (step, what the next hop answers there)
    ("DATA", b"250 2.0.0 Ok: queued\r\n"),        # "delivered" without any data
    ("DATA", b"221 2.0.0 Bye\r\n"),
    ("DATA", b"354 go\r\n250 2.0.0 Ok\r\n"),       # a final reply before the data was sent
    ("dot", b"354 more please\r\n"),
    ("MAIL", b"354 go\r\n"),
    ("MAIL", b"250-first\r\n354 second\r\n"),      # one reply, two codes
    ("MAIL", b"600 what\r\n"),
    ("RCPT", b"354 go\r\n"),
    ("RCPT", b"199 wait\r\n"),
    ("EHLO", b"354 hello\r\n"),
    ("greeting", b"250 hello\r\n"),
]


@pytest.mark.parametrize("extensions", [(), ("PIPELINING",)], ids=["plain", "pipelined"])
@pytest.mark.parametrize("step,lie", LIES, ids=[f"{s}-{lie[:3].decode()}-{i}" for i, (s, lie) in enumerate(LIES)])
def test_a_reply_out_of_protocol_is_451_and_the_connection_is_dropped(step, lie, extensions):
    with ScriptedHop(extensions=extensions, lies={step: lie}) as hop:
        first, second = deliver(SMTPNextHop("127.0.0.1", hop.port), envelope(), envelope())
        assert first == second == {"b@b.test": replies.NEXT_HOP_PROTOCOL}
        assert hop.messages == []
        # Neither connection went back to the pool: the second copy needed its own.
        assert hop.connections == 2


@pytest.mark.parametrize("step,lie", [("BDAT", b"354 go on\r\n"), ("BDAT", b"250-a\r\n550 b\r\n"),
                                      ("RCPT", b"354 go\r\n")])
def test_bdat_reply_out_of_protocol_is_451(step, lie):
    with ScriptedHop(extensions=("PIPELINING", "CHUNKING"), lies={step: lie}) as hop:
        first, second = deliver(SMTPNextHop("127.0.0.1", hop.port), envelope(), envelope())
        assert first == second == {"b@b.test": replies.NEXT_HOP_PROTOCOL}
        assert hop.connections == 2


def test_refusals_pass_back_and_only_a_clean_session_is_reused():
    """The other side of the rule: 4xx/5xx are answers, not protocol errors;
    after a 421 (the server is closing) the connection is not reused either."""
    for extensions in [(), ("PIPELINING",), ("PIPELINING", "CHUNKING")]:
        with ScriptedHop(extensions=extensions, lies={"RCPT": b"550 5.1.1 No such user\r\n"}) as hop:
            first, second = deliver(SMTPNextHop("127.0.0.1", hop.port), envelope(), envelope())
            assert first == second == {"b@b.test": replies.Reply(550, "5.1.1 No such user")}
            assert hop.connections == 1, extensions
        with ScriptedHop(extensions=extensions, lies={"MAIL": b"421 4.3.2 Shutting down\r\n"}) as hop:
            first, second = deliver(SMTPNextHop("127.0.0.1", hop.port), envelope(), envelope())
            assert first == second == {"b@b.test": replies.Reply(421, "4.3.2 Shutting down")}
            assert hop.connections == 2, extensions


def test_out_of_protocol_data_reply_gives_451_through_mailseal_serve(tmp_path):
    with ScriptedHop(extensions=(), lies={"DATA": b"250 2.0.0 Ok: queued as FAKE\r\n"}) as hop:
        d = Daemon(tmp_path / "d", outbound={"next_hop": f"127.0.0.1:{hop.port}"}).start()
        try:
            for _ in range(2):
                t = smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], MESSAGE)
                assert t.data == (451, replies.NEXT_HOP_PROTOCOL.text.encode())
        finally:
            d.stop()
        assert hop.messages == [] and hop.connections == 2
        assert "Traceback" not in d.log_text()


# --- a lying next hop's endless reply, and what of its text reaches our client -----

ENDLESS = [
    ("dot", b"".join(b"250-" + b"y" * 1000 + b"\r\n" for _ in range(3000)) + b"250 ok\r\n"),  # 3 MB, 3,001 lines
    ("dot", b"250-" + b"y" * 200_000 + b"\r\n250 ok\r\n"),  # one line of 200 kB
    ("EHLO", b"".join(b"250-X%d\r\n" % i for i in range(150)) + b"250 ok\r\n"),  # short lines, too many
    ("RCPT", b"".join(b"550-" + b"z" * 400 + b"\r\n" for _ in range(200)) + b"550 no\r\n"),
]


@pytest.mark.parametrize("step,lie", ENDLESS, ids=["dot-3MB", "dot-one-line", "EHLO-151-lines", "RCPT-80kB"])
def test_an_overlong_reply_is_451_and_the_connection_is_dropped(step, lie):
    with ScriptedHop(lies={step: lie}) as hop:
        first, second = deliver(SMTPNextHop("127.0.0.1", hop.port), envelope(), envelope())
        assert first == second == {"b@b.test": replies.NEXT_HOP_REPLY_TOO_LONG}
        assert hop.connections == 2


def test_a_next_hops_reply_reaches_our_client_short_and_printable(tmp_path):
    lie = (b"550-5.1.1 <x@x.test> gone \x1b[31m\xc3\xa9t\xc3\xa9\x07\r\n550-5.1.1 second " + b"w" * 400 + b"\r\n"
           + b"550-5.1.1 third line\r\n550 5.1.1 last line\r\n")
    with ScriptedHop(lies={"RCPT": lie}) as hop:
        [result] = deliver(SMTPNextHop("127.0.0.1", hop.port), envelope())
        passed = result["b@b.test"]
        assert passed.code == 550 and passed.text.splitlines()[0] == "5.1.1 <x@x.test> gone ?[31m?t??"
        assert len(passed.text.splitlines()) == 2 and len(passed.text.splitlines()[1]) == 200
        d = Daemon(tmp_path / "d", outbound={"next_hop": f"127.0.0.1:{hop.port}"}).start()
        try:
            t = smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], MESSAGE)
        finally:
            d.stop()
        code, text = t.data  # smtplib joins a reply's lines with LF
        assert code == 550 and text.startswith(b"5.1.1 <x@x.test> gone ?[31m?t??\n5.1.1 second www"), t
        assert text.count(b"\n") == 1 and b"third" not in text and all(32 <= c < 127 or c == 10 for c in text)


def test_xforward_values_reach_the_next_hop_as_postfix_sent_them(tmp_path):
    """XFORWARD values are xtext (RFC 3461): decoded on the way in and encoded
    once on the way out, not twice (`+20` used to leave as `+2B20`)."""
    sent = "NAME=mail+2Dout.example.org ADDR=192.0.2.1 HELO=[192.0.2.1]+20evil+C3+A9 PROTO=ESMTP"
    with ScriptedHop(extensions=("PIPELINING", "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE")) as hop:
        d = Daemon(tmp_path / "d", outbound={"next_hop": f"127.0.0.1:{hop.port}"}).start()
        try:
            t = smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], MESSAGE, xforward=sent)
            with smtplib.SMTP("127.0.0.1", d.outbound_port, timeout=60) as c:
                c.ehlo("c.test")
                refused = [c.docmd("XFORWARD", attrs) for attrs in ("NAME=a+0Ab", "NAME=a+2", "NAME=a+zz")]
        finally:
            d.stop()
        assert t.data[0] == 250, t
        [xforward] = [c for c in hop.commands if c.startswith("XFORWARD")]
        assert sorted(xforward.split()[1:]) == sorted(sent.replace("mail+2Dout", "mail-out").split())
        assert refused == [(501, b"5.5.4 Bad XFORWARD attribute")] * 3


# --- issue 8 item 13: STARTTLS reply injection ------------------------------------

def test_bytes_buffered_after_starttls_fail_the_connection_before_the_handshake(tmp_path):
    cert_file, server_context = _self_signed(tmp_path)
    client_context = ssl.create_default_context(cafile=str(cert_file))

    def relay_to(hop: ScriptedHop) -> SMTPNextHop:
        return SMTPNextHop("127.0.0.1", hop.port, starttls=True, tls_context=client_context)

    # The honest TLS next hop: the certificate and the CA file are good.
    with ScriptedHop(tls=server_context) as hop:
        [outcome] = deliver(relay_to(hop), envelope())
        assert outcome["b@b.test"].ok and hop.handshakes == 1 and len(hop.messages) == 1

    # A man in the middle appends a forged reply to the 220, in the same segment:
    # it would answer the EHLO sent inside TLS and shift every reply after it.
    injected = {"STARTTLS": b"220 2.0.0 Ready to start TLS\r\n250 fake\r\n"}
    with ScriptedHop(tls=server_context, extensions=(), lies=injected) as hop:
        [outcome] = deliver(relay_to(hop), envelope())
        assert outcome == {"b@b.test": replies.NEXT_HOP_TLS_INJECTION}
        assert outcome["b@b.test"].text.startswith("4.7.")
        assert hop.handshakes == 0 and hop.messages == []
        assert not any(c.upper().startswith("MAIL") for c in hop.commands)


# --- issue 9 item 9: dot-stuffing exactly as a strict receiver unstuffs -----------

FRAMING = [
    # (message, what a strict RFC 5321 receiver must end up with)
    (b"a\r\n.b\r\n", b"a\r\n.b\r\n"),
    (b".at the start\r\n", b".at the start\r\n"),
    (b"x\r\n.\r\ny\r\n", b"x\r\n.\r\ny\r\n"),
    (b"x\r\n..\r\n", b"x\r\n..\r\n"),
    (b"bare\rCR and lone\nLF\r\n", b"bare\rCR and lone\nLF\r\n"),  # no dot after them: as they came
    (b"a\n.b\r\n", b"a\r\n.b\r\n"),  # a dot after a bare LF starts a line for lenient receivers
    (b"a\n.\r\nMAIL FROM:<x@evil.test>\r\n", b"a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n"),
    (b"a\r.\rb\r\n", b"a\r\n.\rb\r\n"),  # likewise after a bare CR
    (b"no final line end", b"no final line end\r\n"),
    (b"", b"\r\n"),
]


def test_a_strict_next_hop_receives_each_dot_exactly():
    for extensions in [(), ("PIPELINING",), ("PIPELINING", "CHUNKING")]:
        with ScriptedHop(extensions=extensions) as hop:
            outcomes = deliver(SMTPNextHop("127.0.0.1", hop.port), *(envelope(m) for m, _ in FRAMING))
            assert all(o["b@b.test"].ok for o in outcomes)
            received = [content for _, content, _ in hop.messages]
            if "CHUNKING" in extensions:  # BDAT: no framing inside, byte for byte
                assert received == [m for m, _ in FRAMING]
                assert not any(c.upper().startswith("DATA") for c in hop.commands)
                continue
            assert received == [want for _, want in FRAMING], extensions
            for _, _, raw in hop.messages:
                assert_no_receiver_ends_early(raw)


def test_a_message_in_pieces_is_framed_as_if_whole():
    """Opened mail arrives in decrypted chunks: a chunk may end in a bare LF or
    CR whose meaning depends on the next chunk's first byte."""
    with ScriptedHop() as hop:
        pieces = [[b"a\n", b".b\r\n"], [b"a\r", b".b\r\n"], [b"a\r", b"\n.b\r\n"], [b"a\r\n", b".b\r\n"],
                  [b"x", b"\n", b"", b".", b"\r\n"], [memoryview(b"a\n"), memoryview(b".b\r\n")]]
        outcomes = deliver(SMTPNextHop("127.0.0.1", hop.port), *(envelope(p) for p in pieces))
        assert all(o["b@b.test"].ok for o in outcomes)
        whole = [b"".join(dot_stuff([b"".join(map(bytes, p))])) for p in pieces]
        assert [raw for _, _, raw in hop.messages] == [w + b".\r\n" for w in whole]
        assert [content for _, content, _ in hop.messages][:4] == [b"a\r\n.b\r\n", b"a\r\n.b\r\n",
                                                                   b"a\r\n.b\r\n", b"a\r\n.b\r\n"]


def test_every_split_of_every_framing_case_agrees():
    for message, want in FRAMING:
        whole = b"".join(dot_stuff([message]))
        for cut in range(len(message) + 1):
            for second in range(cut, len(message) + 1):
                pieces = [message[:cut], message[cut:second], message[second:]]
                assert b"".join(dot_stuff(pieces)) == whole, (message, cut, second)
        assert strict_unstuff(whole + b".\r\n") == want


def test_random_messages_in_random_pieces_keep_every_receiver_in_step():
    rng = random.Random(9)
    for _ in range(3000):
        message = bytes(rng.choice(b"a.\r\n") for _ in range(rng.randrange(12)))
        cuts = sorted(rng.randrange(len(message) + 1) for _ in range(rng.randrange(4)))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)])]
        raw = b"".join(dot_stuff(pieces)) + b".\r\n"
        assert strict_unstuff(raw) == expected_strictly(message), (message, cuts)
        assert_no_receiver_ends_early(raw)


def expected_strictly(message: bytes) -> bytes:
    """The documented rule, written out byte by byte: a bare CR or LF right
    before a dot becomes CRLF; the data ends with CRLF."""
    out = bytearray()
    for i in range(len(message)):
        here, before, after = message[i:i + 1], message[i - 1:i] if i else b"", message[i + 1:i + 2]
        bare = here == b"\r" or (here == b"\n" and before != b"\r")
        out += b"\r\n" if bare and after == b"." else here
    return bytes(out) if out.endswith(b"\r\n") else bytes(out) + b"\r\n"


def strict_unstuff(raw: bytes) -> bytes:
    lines = raw.split(b"\r\n")
    assert lines[-2:] == [b".", b""], "the data must end with the only line '.'"
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines[:-2])


def assert_no_receiver_ends_early(raw: bytes) -> None:
    """Lenient receivers end lines at a bare LF too (Postfix before 3.9, most
    MTAs) or even at a bare CR: for each kind, every line of the message that
    starts with a dot must have been stuffed, so none reads a lone "." (the
    end of data) or loses a dot of the message."""
    assert raw.endswith(b"\r\n.\r\n") or raw == b".\r\n"
    body = raw[:-3]
    for line_end in (rb"\r\n", rb"\r?\n", rb"\r\n|\r|\n"):
        for line in re.split(line_end, body):
            assert not line.startswith(b".") or line.startswith(b".."), (line_end, raw)


# --- issue 9 item 5: bounded fan-out ------------------------------------------------

class CountingSink(Sink):
    """The harness's aiosmtpd sink, counting the connections open at once."""

    def __init__(self) -> None:
        super().__init__()
        self.open = self.peak = self.connections = 0
        self._changed = threading.Condition()
        make = self.controller.factory
        sink = self

        def factory():
            server = make()
            made, lost = server.connection_made, server.connection_lost

            def connection_made(transport):
                with sink._changed:
                    sink.open += 1
                    sink.connections += 1
                    sink.peak = max(sink.peak, sink.open)
                made(transport)

            def connection_lost(exc):
                with sink._changed:
                    sink.open -= 1
                    sink._changed.notify_all()
                lost(exc)

            server.connection_made, server.connection_lost = connection_made, connection_lost
            return server

        self.controller.factory = factory

    def __enter__(self) -> CountingSink:
        super().__enter__()
        # aiosmtpd's controller makes one connection of its own at start: not ours.
        with self._changed:
            assert self._changed.wait_for(lambda: self.open == 0, 30)
            self.peak = self.connections = 0
        return self


@pytest.mark.parametrize("limit", [None, 3])
def test_a_thousand_copies_share_a_bounded_pool(limit):
    with CountingSink() as sink:
        hop = SMTPNextHop("127.0.0.1", sink.port, **({} if limit is None else {"max_connections": limit}))

        async def fan_out():
            try:
                return await asyncio.gather(*(hop.deliver(envelope(MESSAGE, (f"r{i}@b.test",)))
                                              for i in range(1000)))
            finally:
                await hop.close()

        outcomes = asyncio.run(fan_out())
        assert all(o[f"r{i}@b.test"].ok for i, o in enumerate(outcomes))
        assert len(sink.messages) == 1000
        expected = limit or 10
        # The pool fills up to its limit, never beyond, and reuses what it opened.
        assert sink.peak == expected and sink.connections == expected


def test_a_copy_waits_for_a_free_connection_only_so_long():
    with ScriptedHop(hold=True) as hop:
        relay = SMTPNextHop("127.0.0.1", hop.port, max_connections=1, queue_timeout=0.2)

        async def run():
            first = asyncio.ensure_future(relay.deliver(envelope(rcpts=("first@b.test",))))
            assert await asyncio.to_thread(hop.data_seen.wait, 30)
            second = await relay.deliver(envelope(rcpts=("second@b.test",)))
            hop.release.set()
            try:
                return await first, second
            finally:
                await relay.close()

        first, second = asyncio.run(run())
        assert first["first@b.test"].ok
        assert second == {"second@b.test": replies.NEXT_HOP_BUSY}
        assert hop.connections == 1 and [r for r, _, _ in hop.messages] == [["first@b.test"]]


def daemon_with_key(directory, next_hop_port: int, **sections) -> Daemon:
    """An outbound daemon holding a domain key for @b.test."""
    d = Daemon(directory, outbound={"next_hop": f"127.0.0.1:{next_hop_port}", **sections.pop("outbound", {})},
               **sections)
    generated = run_cli("keygen").stdout.decode().splitlines()
    d.cli("keys", "import", "@b.test", next(line.split(": ", 1)[1] for line in generated
                                            if line.startswith("# public key: ")))
    return d


THIRTY_KB = MESSAGE + (b"x" * 76 + b"\r\n") * 390


def test_a_thousand_bcc_copies_through_mailseal_serve(tmp_path):
    """1,000 Bcc recipients of 30 kB: every copy sealed and sent over the
    bounded pool; the 1,001st recipient is one too many (452 4.5.3, sent
    later by the client); and another client's NOOPs, sent without pause
    meanwhile, are each answered at once: sealing 1,000 copies back to back
    on the event loop held them 1.6-2.3 s here; now the longest wait is
    0.1-0.5 s (copies are sealed one a free connection, in threads)."""
    with CountingSink() as sink:
        d = daemon_with_key(tmp_path / "d", sink.port).start()
        done = threading.Event()
        result = {}
        rcpts = [f"r{i}@b.test" for i in range(1001)]

        def send():
            try:
                started = time.monotonic()
                result["t"] = smtp_transaction(d.outbound_port, "a@a.test", rcpts, THIRTY_KB)
                result["took"] = time.monotonic() - started
            finally:
                done.set()

        latencies = []
        try:
            with smtplib.SMTP("127.0.0.1", d.outbound_port, timeout=60) as other:
                other.ehlo("other.test")
                sender = threading.Thread(target=send)
                sender.start()
                while not done.is_set():
                    started = time.monotonic()
                    assert other.noop()[0] == 250
                    latencies.append(time.monotonic() - started)
                sender.join()
        finally:
            d.stop()
        t = result["t"]
        assert t.data[0] == 250, t.data
        assert [r[0] for r in t.rcpts] == [250] * 1000 + [452]
        assert t.rcpts[-1][1] == b"4.5.3 Too many recipients"
        # Every recipient is a Bcc: a sealed copy each, over the default 10 connections.
        assert sorted(r for m in sink.messages for r in m.rcpts) == sorted(rcpts[:1000])
        assert len(sink.messages) == 1000
        assert sink.peak == 10
        assert result["took"] < 60, f"1,000 copies took {result['took']:.0f} s"
        assert len(latencies) > 1 and max(latencies) < 1.0, max(latencies)
        assert "Traceback" not in d.log_text()


def peak_rss_since_reset(pid: int) -> int:
    """Peak resident memory (kB) since reset_peak_rss."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_until_idle(pid: int, timeout: float = 60) -> None:
    """Until the process has used no CPU for a while: whatever it would do
    before the next hop answers, it has done."""
    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    deadline, last, quiet = time.monotonic() + timeout, ticks(), 0
    while quiet < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        now = ticks()
        quiet, last = (quiet + 1 if now == last else 0), now
    assert quiet >= 3, "the daemon never went idle"


def test_copies_waiting_for_a_connection_are_not_sealed_yet(tmp_path):
    """30 Bcc copies of 1 MB behind a next hop that holds its replies, 2
    connections: only the copies being sent are sealed and held in memory
    (sealing all first took 1.37 x 1 MB x 30 = 41 MB more)."""
    message = MESSAGE + (b"y" * 76 + b"\r\n") * 13_000
    with ScriptedHop(hold=True) as hop:
        d = daemon_with_key(tmp_path / "d", hop.port, outbound={"next_hop_connections": 2}).start()
        result = {}
        try:
            reset_peak_rss(d.proc.pid)
            base = peak_rss_since_reset(d.proc.pid)
            sender = threading.Thread(target=lambda: result.update(
                t=smtp_transaction(d.outbound_port, "a@a.test", [f"r{i}@b.test" for i in range(30)], message)))
            sender.start()
            assert hop.data_seen.wait(60)
            wait_until_idle(d.proc.pid)
            grew = peak_rss_since_reset(d.proc.pid) - base
            hop.release.set()
            sender.join(120)
        finally:
            hop.release.set()
            d.stop()
        assert result["t"].data[0] == 250, result["t"]
        assert len(hop.messages) == 30
        assert grew < 20_000, f"{grew} kB more while 28 copies waited"


def test_a_reload_resizes_the_pool_copies_in_flight_and_new_ones_share(tmp_path):
    """SIGHUP while copies wait for the next hop: the pool is kept and resized
    (2 -> 3 connections), so copies in flight and those that come after the
    reload share one bound; a new pool beside the old one used to double it."""
    with ScriptedHop(hold=True) as hop:
        d = Daemon(tmp_path / "d", outbound={"next_hop": f"127.0.0.1:{hop.port}", "next_hop_connections": 2})
        d.start()
        results = []

        def send(n: int) -> list[threading.Thread]:
            threads = [threading.Thread(target=lambda: results.append(
                smtp_transaction(d.outbound_port, "a@a.test", ["x@x.test"], MESSAGE).data[0])) for _ in range(n)]
            for thread in threads:
                thread.start()
            return threads

        def wait_for(predicate, what: str) -> None:
            deadline = time.monotonic() + 30
            while not predicate() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert predicate(), what

        try:
            threads = send(4)
            wait_for(lambda: hop.connections == 2, "two copies at the next hop")
            wait_until_idle(d.proc.pid)  # the other two wait in the pool
            assert hop.connections == 2
            d.config.write_text(d.config.read_text().replace("next_hop_connections = 2", "next_hop_connections = 3"))
            d.signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in d.log_text(), "the reload")
            wait_for(lambda: hop.connections == 3, "a waiting copy got the third connection")
            threads += send(2)
            wait_until_idle(d.proc.pid)
            assert hop.connections == 3, "copies after the reload opened connections beyond the bound"
            hop.release.set()
            for thread in threads:
                thread.join(60)
        finally:
            hop.release.set()
            d.stop()
        assert results == [250] * 6
        assert len(hop.messages) == 6 and hop.connections == 3


# --- the setting --------------------------------------------------------------------

def test_next_hop_connections_setting_is_validated(tmp_path):
    def load(value, next_hop="127.0.0.1:25"):
        return config.from_dict({"inbound": {"next_hop": next_hop, "next_hop_connections": value}}, tmp_path)

    assert load(25).inbound.next_hop.connections == 25
    assert next_hop_for(load(25).inbound.next_hop).max_connections == 25
    assert config.from_dict({"outbound": {}}, tmp_path).outbound.next_hop.connections == 10
    for bad in (0, -1, 1001, "ten", True, 2.5):
        with pytest.raises(config.ConfigError, match=r"\[inbound\] next_hop_connections: expected a number"):
            load(bad)
    with pytest.raises(config.ConfigError, match=r"next_hop_connections: only for an SMTP next hop"):
        load(5, next_hop="maildir:box")
    path = tmp_path / "bad.toml"
    path.write_text('[outbound]\nnext_hop_connections = 0\n')
    result = run_cli("-c", str(path), "check-config")
    assert result.returncode == 2
    # check-config reports every problem, one line each (this file has no keystore either)
    assert f"{path}: [outbound] next_hop_connections: expected a number from 1 to 1000, got 0" in \
        result.stderr.decode().splitlines()
    assert b"Traceback" not in result.stderr
