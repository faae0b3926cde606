"""Delivery to the next hop: an SMTP client with a bounded connection pool, or a Maildir.

mailseal answers its client only after this returns: a recipient's reply is
2xx only when the next hop accepted the mail for it. Unreachable, timed out
or 4xx next hops give 4xx replies, so the MTA keeps the mail and retries; a
5xx from the next hop is passed back as it came. A reply the protocol does
not allow at that step (a 2xx to DATA, a 3xx to MAIL, a reply nobody asked
for) is a 4xx too, and that connection is dropped, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import replies
from .replies import Reply

COMMAND_TIMEOUT = 120.0
CONNECT_TIMEOUT = 30.0
FINAL_REPLY_TIMEOUT = 600.0  # RFC 5321 4.5.3.2.6: ten minutes for the final dot
DEFAULT_CONNECTIONS = 10  # per next hop: [outbound]/[inbound] next_hop_connections
QUEUE_TIMEOUT = 300.0  # the longest a copy waits for a free connection
IDLE_REUSE = 60.0  # an idle connection older than this is closed, not reused
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
# A next hop's reply, bounded (RFC 5321 4.5.3.1.5 allows 512 octets a line; an
# EHLO lists a few dozen lines): beyond any of these, 451 4.5.0 and the
# connection is dropped, so a lying next hop cannot make us buffer without end.
REPLY_LINE_LIMIT = 4096  # octets a line (the stream reader's limit)
REPLY_LINES = 100
REPLY_BYTES = 64 * 1024
# What of a next hop's reply text reaches our client: its first lines, printable
# ASCII, cut short. The next hop's words must not become ours at length.
PASSED_BACK_LINES = 2
PASSED_BACK_LINE = 200
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


Buffer = bytes | bytearray | memoryview
SEND_SLICE = 1 << 20  # a large message goes out a MiB at a time, never copied whole

_REPLY_CODE = re.compile(r"[2-5][0-5][0-9]")  # RFC 5321 4.2; 1yz has no use in SMTP
_POSITIVE = range(200, 300)
_GO_AHEAD = (354,)
_READY = (220,)


@dataclass
class Envelope:
    """One copy to send. `data` is the message, or its pieces in order
    (the opened message is its trace header, its header block and the
    decrypted chunks, never joined into one buffer)."""

    mail_from: str
    rcpts: Sequence[str]
    data: Buffer | Sequence[Buffer]
    smtputf8: bool = False
    eight_bit: bool = False
    xforward: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.data, (bytes, bytearray, memoryview)):
            self.data = (self.data,)
        self.size = sum(len(p) for p in self.data)


class _Broken(Exception):
    """The connection is unusable; carries the reply to give for it."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.in_data = False  # broke after DATA: the next hop may hold a copy


def _expect(reply: Reply, success: Container[int]) -> Reply:
    """The reply, if this step allows it: one of its `success` codes or a
    refusal (4xx/5xx). Anything else (a 2xx to DATA, a 354 to MAIL) means the
    next hop and mailseal no longer agree where they are in the dialogue:
    whatever it says next cannot be trusted, so the connection is dropped."""
    if reply.code >= 400 or reply.code in success:
        return reply
    raise _Broken(replies.NEXT_HOP_PROTOCOL)


# After a CR or LF, a dot is where receivers disagree: RFC 5321 ends lines at
# CRLF only, Postfix (and most MTAs) at a bare LF too, a few at a bare CR.
# There it becomes CRLF "..": every one of them then removes that one dot.
_DOT_AFTER_LINE_END = re.compile(rb"(?:\r\n|\r|\n)\.")


def _dot_after_line_end(piece: bytes | bytearray) -> bool:
    """Is there a dot right after a CR or LF?

    Searching for one byte is many times faster than for two, and sealed
    mail (base64) has dots only in its header: the pairs are looked for only
    from the first dot to the last.
    """
    first = piece.find(b".")
    if first < 0:
        return False
    start, end = max(first - 1, 0), piece.rfind(b".") + 1
    return piece.find(b"\n.", start, end) >= 0 or piece.find(b"\r.", start, end) >= 0


def dot_stuff(pieces: Sequence[Buffer]) -> list[Buffer]:
    """RFC 5321 4.5.2 transparency over a message in pieces, and the final
    CRLF the terminator needs.

    A dot is stuffed where a line starts: at the start and after each CRLF.
    A bare CR or LF goes as it came, except before a dot, where it becomes
    CRLF and the dot is stuffed, so strict and lenient receivers alike read
    one dot and no receiver sees an end of data inside the message.
    A piece is copied only when it has such a dot (sealed mail never does)
    or ends in a bare CR or LF (its meaning depends on the next piece).
    """
    out: list[Buffer] = []
    line_start = True
    carry = b""  # a bare CR or LF that ended the last piece
    final = len(pieces) - 1
    for index, piece in enumerate(pieces):
        if not piece:
            continue
        if carry:
            piece = carry + piece
            carry = b""
        elif isinstance(piece, memoryview):
            piece = piece.tobytes()
        end = piece[-1:]
        if index < final and (end == b"\r" or (end == b"\n" and piece[-2:-1] != b"\r")):
            carry, piece = end, piece[:-1]
            if not piece:
                continue
        if _dot_after_line_end(piece):
            piece = _DOT_AFTER_LINE_END.sub(b"\r\n..", piece)
        if line_start and piece.startswith(b"."):
            out.append(b".")
        out.append(piece)
        line_start = piece.endswith(b"\r\n")
    if carry:
        out.append(carry)
    if not out or not out[-1].endswith(b"\r\n"):
        out.append(b"\r\n")  # the terminator is CRLF "." CRLF, whatever the message ends with
    return out


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.extensions: dict[str, str] = {}
        self.reusable = True  # False once the server said it is closing, or a reset failed

    @property
    def unsolicited(self) -> bool:
        """The server has sent bytes no command asked for (yet)."""
        return bool(self.reader._buffer)  # asyncio offers no public view of what it holds

    async def reply(self, timeout: float = COMMAND_TIMEOUT) -> Reply:
        lines = []
        code = None
        size = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.reader.readline()
                    if not line.endswith(b"\n"):
                        raise _Broken(replies.NEXT_HOP_UNREACHABLE)  # closed mid-reply
                    size += len(line)
                    if len(lines) >= REPLY_LINES or size > REPLY_BYTES:
                        raise _Broken(replies.NEXT_HOP_REPLY_TOO_LONG)
                    text = line.decode("utf-8", "replace").rstrip("\r\n")
                    separator = text[3:4]
                    if not _REPLY_CODE.fullmatch(text[:3]) or separator not in ("", " ", "-") \
                            or text[:3] != (code or text[:3]):
                        raise _Broken(replies.NEXT_HOP_PROTOCOL)
                    code = text[:3]
                    lines.append(text[4:])
                    if separator != "-":
                        if code == "421":
                            self.reusable = False  # RFC 5321 3.8: it closes the channel next
                        return Reply(int(code), "\n".join(lines))
        except TimeoutError:
            raise _Broken(replies.NEXT_HOP_TIMEOUT) from None
        except ValueError:  # a line beyond the reader's limit
            raise _Broken(replies.NEXT_HOP_REPLY_TOO_LONG) from None
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            raise _Broken(replies.NEXT_HOP_UNREACHABLE) from None

    async def send(self, *pieces: Buffer) -> None:
        if self.unsolicited:
            # A reply before the command (say, a 250 sent along with the 354):
            # every reply from here on would answer something else.
            raise _Broken(replies.NEXT_HOP_PROTOCOL)
        if len(pieces) > 1 and sum(map(len, pieces)) <= SEND_SLICE:
            pieces = (b"".join(pieces),)  # one write, one system call, for the common small message
        try:
            for piece in pieces:
                with memoryview(piece) as view:
                    for start in range(0, len(view), SEND_SLICE):
                        self.writer.write(view[start : start + SEND_SLICE])
                        # The transport copies what the socket does not take
                        # at once: past a MiB waiting, let it drain first, so
                        # a large message is never copied whole.
                        if self.writer.transport.get_write_buffer_size() > SEND_SLICE:
                            async with asyncio.timeout(COMMAND_TIMEOUT):
                                await self.writer.drain()
            if self.writer.transport.get_write_buffer_size() > 1 << 16:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self.writer.drain()
        except TimeoutError:
            raise _Broken(replies.NEXT_HOP_TIMEOUT) from None
        except (ConnectionError, OSError):
            raise _Broken(replies.NEXT_HOP_UNREACHABLE) from None

    async def command(self, line: str, success: Container[int] = _POSITIVE,
                      timeout: float = COMMAND_TIMEOUT) -> Reply:
        await self.send(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return _expect(await self.reply(timeout), success)

    async def reset(self) -> None:
        """RSET after a transaction that went nowhere; a refused RSET leaves
        the session in doubt, so the connection is not reused."""
        if not (await self.command("RSET")).ok:
            self.reusable = False

    def close(self) -> None:
        self.writer.close()


def _xtext(value: str) -> str:
    """RFC 3461 xtext, as XFORWARD values are written."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}"
                   for c in value.encode("utf-8", "surrogateescape").decode("latin-1"))


def passed_back(reply: Reply) -> Reply:
    """A next hop's reply as our client gets it: the first PASSED_BACK_LINES
    lines, printable ASCII only, each at most PASSED_BACK_LINE characters.
    Our own replies (already so) come back as they are."""
    lines = reply.text.split("\n")
    short = [_UNPRINTABLE.sub("?", line[:PASSED_BACK_LINE]) for line in lines[:PASSED_BACK_LINES]]
    return reply if short == lines else Reply(reply.code, "\n".join(short))


class _Slots:
    """A counting limit, like asyncio.Semaphore, that a reload can resize
    while slots are held; waiters are served first come, first served."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def free(self) -> bool:
        return self.held < self.limit and not self._waiters

    async def acquire(self) -> None:
        if self.free():
            self.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we gave up: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1  # the slot is the waiter's from now
                waiter.set_result(None)


Prepare = Callable[[], Awaitable["Envelope | dict[str, Reply]"]]


async def _ready(envelope: Envelope) -> Envelope:
    return envelope


class SMTPNextHop:
    """An SMTP server as next hop, through a pool of at most `max_connections`.

    Copies beyond the limit wait for a free connection (at most
    `queue_timeout` seconds, then 451 4.4.5); idle connections are reused.
    A connection is only ever opened by a copy holding a free slot while no
    idle one is left, so no more than `max_connections` are ever open.
    """

    def __init__(self, host: str, port: int, *, starttls: bool = False, helo: str | None = None,
                 tls_context: ssl.SSLContext | None = None, max_connections: int = DEFAULT_CONNECTIONS,
                 queue_timeout: float = QUEUE_TIMEOUT, tls_source: object = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.host, self.port, self.starttls = host, port, starttls
        self.helo = helo or socket.getfqdn()
        self.max_connections, self.queue_timeout = max_connections, queue_timeout
        self._tls = tls_context or ssl.create_default_context()
        self._tls_source = tls_source  # what _tls was made from (a reload compares it)
        self._slots = _Slots(max_connections)  # one per copy being prepared or delivered
        self._idle: list[tuple[_Connection, float]] = []
        self._closed = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=REPLY_LINE_LIMIT), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            raise _Broken(replies.NEXT_HOP_TIMEOUT) from None
        except OSError:
            raise _Broken(replies.NEXT_HOP_UNREACHABLE) from None
        conn = _Connection(reader, writer)
        try:
            greeting = _expect(await conn.reply(), _READY)
            if not greeting.ok:
                raise _Broken(Reply(451, f"4.4.1 Next hop greeted with {greeting.code}, try again later"))
            await self._ehlo(conn)
            if self.starttls:
                await self._start_tls(conn)
                await self._ehlo(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _start_tls(self, conn: _Connection) -> None:
        if "STARTTLS" not in conn.extensions:
            raise _Broken(Reply(451, "4.7.4 Next hop does not offer STARTTLS, which is required"))
        if not (await conn.command("STARTTLS", _READY)).ok:
            raise _Broken(Reply(451, "4.7.4 Next hop refused STARTTLS"))
        # Whatever came with the 220 was sent in clear and would be read as
        # if it came through TLS: a man in the middle's forged replies. No
        # await between this check and start_tls, which stops reading from
        # the plain socket before it yields.
        if conn.unsolicited:
            raise _Broken(replies.NEXT_HOP_TLS_INJECTION)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await conn.writer.start_tls(self._tls, server_hostname=self.host)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            raise _Broken(Reply(451, f"4.7.5 TLS with the next hop failed: {exc}")) from None

    async def _ehlo(self, conn: _Connection) -> None:
        reply = await conn.command(f"EHLO {self.helo}")
        if not reply.ok:
            raise _Broken(Reply(451, f"4.5.0 Next hop refused EHLO: {reply.code}"))
        conn.extensions = {}
        for line in reply.text.splitlines()[1:]:
            name, _, params = line.partition(" ")
            conn.extensions[name.upper()] = params

    async def _take(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < IDLE_REUSE and not conn.reader.at_eof() and not conn.unsolicited:
                return conn, True
            conn.close()  # timed out, closed, or the server said something (421) while idle
        return await self._connect(), False

    def _give_back(self, conn: _Connection) -> None:
        if conn.reusable and not conn.unsolicited and not self._closed:
            self._idle.append((conn, time.monotonic()))
        else:
            conn.close()

    def same_place(self, other: SMTPNextHop) -> bool:
        """Whether `other` (from a reloaded configuration) talks to the same
        next hop the same way, so this pool can go on serving it."""
        return (self.host, self.port, self.starttls) == (other.host, other.port, other.starttls) \
            and self._tls_source == other._tls_source

    def resize(self, max_connections: int) -> None:
        """A reload's new next_hop_connections: copies in flight keep their
        connections; no more than the new limit are in use once they finish."""
        self.max_connections = max_connections
        self._slots.resize(max_connections)
        while len(self._idle) > max_connections:  # fewer now: the oldest idle ones go
            conn, _ = self._idle.pop(0)
            conn.close()

    async def deliver(self, envelope: Envelope) -> dict[str, Reply]:
        """Send one message; return the next hop's verdict for each recipient."""
        return await self.deliver_prepared(envelope.rcpts, lambda: _ready(envelope))

    async def deliver_prepared(self, rcpts: Sequence[str], prepare: Prepare) -> dict[str, Reply]:
        """Take a connection slot, then make the copy (`prepare`: the Envelope,
        or the replies that end it, say a failed sealing) and send it: a copy
        waiting for a connection costs no memory and no sealing yet."""
        if not self._slots.free():  # all connections busy: wait, but not forever
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                return dict.fromkeys(rcpts, replies.NEXT_HOP_BUSY)
        else:
            await self._slots.acquire()  # free: no wait, no timer
        try:
            prepared = await prepare()
            if isinstance(prepared, dict):
                return prepared
            result = await self._deliver(prepared)
        finally:
            self._slots.release()
        return {rcpt: passed_back(reply) for rcpt, reply in result.items()}

    async def _deliver(self, envelope: Envelope) -> dict[str, Reply]:
        for attempt in (1, 2):
            try:
                conn, reused = await self._take()
            except _Broken as exc:
                return dict.fromkeys(envelope.rcpts, exc.reply)
            try:
                result = await self._transaction(conn, envelope)
            except _Broken as exc:
                conn.close()
                if reused and attempt == 1 and exc.reply is replies.NEXT_HOP_UNREACHABLE \
                        and not exc.in_data:
                    continue  # a stale pooled connection: one fresh try
                return dict.fromkeys(envelope.rcpts, exc.reply)
            except BaseException:
                conn.close()
                raise
            self._give_back(conn)
            return result
        raise RuntimeError("unreachable: the second attempt always returns")

    async def _transaction(self, conn: _Connection, env: Envelope) -> dict[str, Reply]:
        ext = conn.extensions
        if env.xforward and "XFORWARD" in ext:
            offered = set(ext["XFORWARD"].upper().split())
            attrs = [f"{k}={_xtext(v)}" for k, v in env.xforward.items() if k in offered]
            if attrs:
                reply = await conn.command("XFORWARD " + " ".join(attrs))
                if not reply.ok:
                    return dict.fromkeys(env.rcpts, reply)
        params = [f"SIZE={env.size}"] if "SIZE" in ext else []
        if env.eight_bit and "8BITMIME" in ext:
            params.append("BODY=8BITMIME")
        if env.smtputf8:
            if "SMTPUTF8" not in ext:
                return dict.fromkeys(env.rcpts, Reply(550, "5.6.7 Next hop does not support SMTPUTF8"))
            params.append("SMTPUTF8")
        sender = "" if env.mail_from in ("", "<>") else env.mail_from
        mail = f"MAIL FROM:<{sender}>" + "".join(" " + p for p in params)
        rcpt_lines = [f"RCPT TO:<{r}>" for r in env.rcpts]
        if "PIPELINING" in ext:
            return await self._pipelined(conn, env, mail, rcpt_lines, chunking="CHUNKING" in ext)
        mail_reply = await conn.command(mail)
        if not mail_reply.ok:
            return dict.fromkeys(env.rcpts, mail_reply)
        result = {r: await conn.command(line) for r, line in zip(env.rcpts, rcpt_lines, strict=True)}
        accepted = [r for r, reply in result.items() if reply.ok]
        try:
            if not accepted:
                await conn.reset()
                return result
            start = await conn.command("DATA", _GO_AHEAD)
            if start.code != 354:
                await conn.reset()
                return {r: (start if r in accepted else reply) for r, reply in result.items()}
            await conn.send(*dot_stuff(env.data), b".\r\n")
            final = _expect(await conn.reply(FINAL_REPLY_TIMEOUT), _POSITIVE)
        except _Broken as exc:
            # After DATA started, a broken connection counts as not accepted
            # (451): the MTA's retry may duplicate, never lose, the message.
            exc.in_data = True
            raise
        return {r: (final if r in accepted else reply) for r, reply in result.items()}

    async def _pipelined(self, conn: _Connection, env: Envelope, mail: str, rcpt_lines: list[str],
                         chunking: bool) -> dict[str, Reply]:
        """RFC 2920 (and RFC 3030): the whole envelope in one write.

        With CHUNKING the message goes in the same write (BDAT n LAST, no
        dot-stuffing, byte for byte): one round trip a message. Otherwise
        DATA ends the group and the message follows the 354.
        """
        envelope = "".join(line + "\r\n" for line in [mail, *rcpt_lines]).encode("utf-8", "surrogateescape")
        mail_reply = None
        try:
            if chunking:
                await conn.send(envelope, f"BDAT {env.size} LAST\r\n".encode(), *env.data)
            else:
                await conn.send(envelope, b"DATA\r\n")
            mail_reply = _expect(await conn.reply(), _POSITIVE)
            rcpt_replies = [_expect(await conn.reply(), _POSITIVE) for _ in rcpt_lines]
            result = dict(zip(env.rcpts, rcpt_replies, strict=True))
            accepted = [r for r, reply in result.items() if reply.ok] if mail_reply.ok else []
            if chunking:
                last = _expect(await conn.reply(FINAL_REPLY_TIMEOUT), _POSITIVE)
            else:
                last = _expect(await conn.reply(), _GO_AHEAD)
                if last.code == 354 and not accepted:
                    # The server wants data nobody will receive: end it empty.
                    await conn.send(b".\r\n")
                    last = _expect(await conn.reply(), _POSITIVE)
                elif last.code == 354:
                    await conn.send(*dot_stuff(env.data), b".\r\n")
                    last = _expect(await conn.reply(FINAL_REPLY_TIMEOUT), _POSITIVE)
            if last.ok and not accepted:
                conn.reusable = False  # took a message for nobody: its state is in doubt
        except _Broken as exc:
            # Not a word back yet: a stale pooled connection, safe to retry.
            exc.in_data = mail_reply is not None
            raise
        if not mail_reply.ok:
            return dict.fromkeys(env.rcpts, mail_reply)
        return {r: (last if r in accepted else reply) for r, reply in result.items()}

    async def close(self) -> None:
        """Close the idle connections; those in use close when their copy is done."""
        self._closed = True
        for conn, _ in self._idle:
            conn.close()
        self._idle.clear()


class MaildirNextHop:
    """Local delivery into a Maildir (the demo and `make run`): tmp/, fsync, new/."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._counter = 0

    def __str__(self) -> str:
        return f"maildir:{self.path}"

    def _write(self, pieces: Sequence[Buffer]) -> str:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._counter += 1
        name = f"{time.time():.6f}.P{os.getpid()}Q{self._counter}.{socket.gethostname()}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.writelines(pieces)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, self.path / "new" / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return name

    async def deliver_prepared(self, rcpts: Sequence[str], prepare: Prepare) -> dict[str, Reply]:
        prepared = await prepare()
        return prepared if isinstance(prepared, dict) else await self.deliver(prepared)

    async def deliver(self, envelope: Envelope) -> dict[str, Reply]:
        try:
            name = await asyncio.to_thread(self._write, envelope.data)
        except OSError:
            return dict.fromkeys(envelope.rcpts, replies.LOCAL_DELIVERY_FAILED)
        return dict.fromkeys(envelope.rcpts, replies.ok(f"delivered to maildir as {name}"))

    async def close(self) -> None:
        pass


def next_hop_for(config_next_hop) -> SMTPNextHop | MaildirNextHop:
    if config_next_hop.maildir is not None:
        return MaildirNextHop(config_next_hop.maildir)
    ep = config_next_hop.endpoint
    context = None
    if config_next_hop.ca_file is not None:
        context = ssl.create_default_context(cafile=str(config_next_hop.ca_file))
    return SMTPNextHop(ep.host, ep.port, starttls=config_next_hop.starttls, tls_context=context,
                       max_connections=config_next_hop.connections, tls_source=config_next_hop.ca_file)


def reloaded(current, config_next_hop):
    """The next hop after a reload (or at start, `current` None): the running
    pool, resized, when it goes to the same place the same way, so copies in
    flight and new ones count against one limit; else a new one, and the old
    one's idle connections are closed (those in use close when done)."""
    fresh = next_hop_for(config_next_hop)
    if isinstance(current, SMTPNextHop) and isinstance(fresh, SMTPNextHop) and current.same_place(fresh):
        current.resize(fresh.max_connections)
        return current
    if current is not None:
        asyncio.get_running_loop().create_task(current.close())  # runs to its end in one step
    return fresh
