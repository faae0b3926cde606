"""The SMTP/LMTP edge: aiosmtpd, with what a content filter next to Postfix needs.

* only `allowed_clients` may talk to us: anyone else gets 554 and is gone;
  beyond max_connections_per_client (or max_connections in all) a client
  gets 421 4.7.0 at connect;
* SIZE is advertised from max_message_size, and oversize mail gets 552 5.3.4;
* command lines are at most COMMAND_LINE_LIMIT octets (500 5.5.6 beyond),
  so a client never makes us buffer more than that outside DATA;
* DATA is read in bulk (not line by line), with dot-unstuffing, the size
  limit and pipelined commands after the final dot handled exactly, and
  lines of any length accepted up to the size limit;
* a client silent for idle_timeout between commands, or for data_timeout
  within DATA, gets 421 4.4.2 and is closed: DATA is timed by its
  progress, not its length;
* every refusal carries an enhanced status code (RFC 3463), aiosmtpd's own
  replies included, and ENHANCEDSTATUSCODES is advertised;
* after an internal error the transaction is reset, so the client can go on;
* nothing a client sent reaches the log through aiosmtpd;
* XFORWARD from Postfix is accepted, so the original client survives the filter.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Sequence

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from . import replies

log = logging.getLogger("mailseal.smtp")
TERMINATOR = b"\r\n.\r\n"
READ_SIZE = 1 << 18
XFORWARD_NAMES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
# RFC 5321 allows 512 octets a command line, and its extensions more (SIZE,
# SMTPUTF8, XFORWARD's attributes): 4,096 with the CRLF. Only DATA has
# lines up to the message size limit.
COMMAND_LINE_LIMIT = 4096
IDLE_TIMEOUT = 300  # seconds without a command (RFC 5321 4.5.3.2.7: at least 5 minutes)
DATA_TIMEOUT = 300  # seconds without a byte of DATA


def _nothing_from_clients(record: logging.LogRecord) -> bool:
    """aiosmtpd logs command lines and addresses (INFO), and after a refused
    DATA the first word of each body line the client streams anyway
    (`unrecognised: ...`, WARNING). None of that may reach a log, whatever
    the log level: the gateway logs what it needs itself."""
    return False


for _name in ("mail.log", "mail.debug"):
    logging.getLogger(_name).addFilter(_nothing_from_clients)


class _FixedLimit(dict):
    """aiosmtpd's per-command line limits, pinned to one value: its EHLO
    raises the MAIL limit on a dict shared by every session, each time."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __getitem__(self, command: str) -> int:
        return self.limit

    def __setitem__(self, command: str, value: int) -> None:
        pass


# The replies aiosmtpd (1.4, smtp.py and lmtp.py) gives itself without an
# enhanced status code, and the code each gets (RFC 3463); the first
# matching start wins. Those it sends with a code already (553 5.1.3,
# 530 5.7.0, 538 5.7.11, 504 5.5.4, 501 5.5.2, 421 4.7.0, 502 5.5.1 "Too many
# unrecognized commands") pass unchanged; so does the greeting, EHLO's
# keywords, 354 and HELP's 250 lines.
AIOSMTPD_REPLIES = (
    ("500 Command line too long", "5.5.6"),
    ("500 Line too long", "5.5.6"),  # DATA: not reached, we read DATA ourselves
    ("500 Error: bad syntax", "5.5.2"),  # an empty line, an 8-bit verb
    ("500 Error: strict ASCII mode", "5.6.7"),  # SMTPUTF8 is on: not reached
    ("500 Error: command", "5.5.1"),  # "X" not recognized; HELO/EHLO to LMTP; AUTH before EHLO
    ("501 ", "5.5.4"),  # Syntax: HELO/EHLO/QUIT/RSET/MAIL/RCPT/STARTTLS; BODY=...; SMTPUTF8 takes no
    #                     arguments; AUTH: Not enough value, Too many values; HELP: Supported commands
    ("502 ", "5.5.1"),  # EXPN not implemented (VRFY is ours: disabled)
    ("503 ", "5.5.1"),  # send HELO/EHLO first, nested MAIL, need MAIL command, Already authenticated
    ("530 ", "5.7.0"),  # Must issue a STARTTLS command first (no TLS here: not reached)
    ("552 ", "5.3.4"),  # exceeds fixed maximum message size, Too much mail data (ours: not reached)
    ("554 ", "5.7.0"),  # Command refused due to lack of security (TLS: not reached)
    ("555 ", "5.5.4"),  # MAIL FROM / RCPT TO parameters not recognized or not implemented
    ("250 OK", "2.0.0"),  # NOOP, RSET
    ("221 Bye", "2.0.0"),  # QUIT
)
_ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_REPLY_LINE = re.compile(r"(\d{3})([ -])(.*)", re.S)


def enhanced(reply: str) -> str:
    """The reply (one or several lines) with an enhanced status code on
    every 4xx and 5xx line, and on aiosmtpd's own 2xx replies: from
    AIOSMTPD_REPLIES, else class.0.0 (RFC 3463 "other or undefined")."""
    lines = reply.split("\r\n")
    for i, line in enumerate(lines):
        match = _REPLY_LINE.fullmatch(line)
        if match is None or _ENHANCED.match(line):
            continue
        code, sep, text = match.groups()
        detail = next((d for start, d in AIOSMTPD_REPLIES if line.startswith(start)), None)
        if detail is None and code[0] in "45":
            detail = f"{code[0]}.0.0"
        if detail is not None:
            lines[i] = f"{code}{sep}{detail} {text}"
    return "\r\n".join(lines)


class Admission:
    """Connections held per client address and in all, in one process.

    Beyond either limit a new connection is answered 421 at once and
    closed: one client cannot take every slot, nor all clients together
    every file descriptor.
    """

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self.by_client: dict[str, int] = {}
        self.count = 0

    def admit(self, client: str) -> replies.Reply | None:
        if self.count >= self.total:
            return replies.TOO_MANY_CONNECTIONS
        if self.by_client.get(client, 0) >= self.per_client:
            return replies.TOO_MANY_FROM_CLIENT
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self.count += 1
        return None

    def release(self, client: str) -> None:
        self.count -= 1
        left = self.by_client.pop(client) - 1
        if left:
            self.by_client[client] = left


def client_allowed(peer, networks: Sequence[ipaddress._BaseNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
    except (ValueError, TypeError, IndexError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


_PLAIN_ADDRESS = re.compile(r"<([^<>\s\"\\()@,:;]+@[^<>\s\"\\()@,:;]+|)>(.*)", re.S)


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _from_xtext(value: str) -> str | None:
    """An RFC 3461 xtext value (as Postfix writes XFORWARD's) decoded, or
    None when it is not xtext or decodes to a control character (no client
    name holds one; a log line might show it). Decoded bytes that are not
    UTF-8 are kept as surrogates, so the relay's encoding gives back the
    same bytes."""
    if _XTEXT.fullmatch(value) is None:
        return None
    raw = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value).encode("latin-1")
    if _CONTROL.search(raw):
        return None
    return raw.decode("utf-8", "surrogateescape")


class _EdgeMixin:
    """Shared by the SMTP and LMTP servers; configured by make_server."""

    allowed_clients: Sequence[ipaddress._BaseNetwork] = ()
    max_message_size: int = 0
    admission: Admission | None = None
    registry: set | None = None
    idle_timeout: float = IDLE_TIMEOUT
    data_timeout: float = DATA_TIMEOUT
    command_size_limit = COMMAND_LINE_LIMIT - 2  # without the CRLF
    command_size_limits = _FixedLimit(COMMAND_LINE_LIMIT - 2)
    # The stream reader's limit: where the line feed of a command line must
    # come by (DATA raises it while it reads, see _read_data).
    line_length_limit = COMMAND_LINE_LIMIT - 1
    _client: str | None = None  # the address admission counted, once admitted
    _refused = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # the same connection, after STARTTLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        if not client_allowed(peer, self.allowed_clients):
            log.warning("refused connection from %s: not in allowed_clients", peer and peer[0])
            self._refuse(transport, replies.CLIENT_NOT_ALLOWED)
            return
        if self.admission is not None:
            refusal = self.admission.admit(peer[0])
            if refusal is not None:
                log.warning("refused connection from %s: %s", peer[0], refusal.text[6:])
                self._refuse(transport, refusal)
                return
            self._client = peer[0]
        self._refused = False
        super().connection_made(transport)

    @staticmethod
    def _refuse(transport: asyncio.BaseTransport, reply: replies.Reply) -> None:
        transport.write(str(reply).encode() + b"\r\n")
        transport.close()

    def connection_lost(self, exc) -> None:
        if self.registry is not None:
            self.registry.discard(self)
        if self._client is not None:
            self.admission.release(self._client)
            self._client = None
        if self._refused:
            return
        super().connection_lost(exc)

    @property
    def busy(self) -> bool:
        """True while a message is between MAIL and the reply to DATA."""
        return bool(self.envelope is not None and self.envelope.mail_from)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def eof_received(self):
        if self._refused:
            return False
        return super().eof_received()

    def _timeout_cb(self) -> None:
        """Idle, or DATA stalled: say so with 421 before closing (RFC 5321 3.8)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("closing the connection from %s: timeout", self._client or "-")
        transport.write(str(replies.TIMEOUT).encode() + b"\r\n")
        if transport.get_write_buffer_size():
            transport.abort()  # the client reads nothing: do not wait for it
        else:
            transport.close()

    async def push(self, status) -> None:
        await super().push(enhanced(status) if isinstance(status, str) else status)

    async def handle_exception(self, error: Exception) -> str:
        """An internal error: the handler's reply (which never raises), and
        the transaction reset, so that the next MAIL is not a nested one."""
        self._set_rset_state()
        self._reset_timeout()
        try:
            return await super().handle_exception(error)
        except Exception:  # noqa: BLE001 - aiosmtpd would answer with the error's text
            return str(replies.INTERNAL_ERROR)

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push(str(replies.VRFY_DISABLED))

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if not self.tls_context:  # not offered: the client's mistake, not a passing fault (454)
            await self.push(str(replies.STARTTLS_NOT_OFFERED))
            return
        await super().smtp_STARTTLS(arg)

    def _getaddr(self, arg: str):
        """`<local@domain> params` without the email package's full parser.

        aiosmtpd parses every MAIL and RCPT address with the RFC 5322 header
        parser, a large share of the per-message CPU; plain addresses (all
        but a few) take this fast path, anything unusual the full one.
        """
        match = _PLAIN_ADDRESS.fullmatch(arg.strip()) if arg else None
        if match is None:
            try:
                return super()._getaddr(arg)
            except Exception:  # noqa: BLE001 - 2,000 nested comments, `<x@[\\]>` (AttributeError), ...
                return None, None  # "553 5.1.3 malformed address", the transaction kept
        return match.group(1) or "<>", match.group(2).strip()

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD: remember the original client for the next hop."""
        if not arg or self.envelope.mail_from:
            await self.push(str(replies.XFORWARD_BAD))
            return
        attrs = {}
        for item in arg.split():
            name, sep, value = item.partition("=")
            decoded = _from_xtext(value)
            if not sep or name.upper() not in XFORWARD_NAMES or decoded is None:
                await self.push(str(replies.XFORWARD_BAD))
                return
            attrs[name.upper()] = decoded  # the relay encodes it again for the next hop
        xforward = getattr(self.session, "xforward", {})
        xforward.update(attrs)
        self.session.xforward = xforward
        await self.push(str(replies.XFORWARD_OK))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await self._read_data()
        self._reset_timeout()
        if content is None:
            self._set_post_data_state()
            await self.push(str(replies.MESSAGE_TOO_BIG))
            return
        self.envelope.content = self.envelope.original_content = content
        # No timer while the message is sealed or opened and relayed: the
        # relay has timeouts of its own, and the client is waiting for us.
        self._timeout_handle.cancel()
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        self._reset_timeout()
        await self.push(status)

    async def _read_data(self) -> bytearray | None:
        """The message after 354, unstuffed; None when it exceeded the limit.

        Reads in large blocks up to the terminator; anything after it (a
        pipelined QUIT or MAIL) goes back to the reader for the command loop.
        The message stays in the one buffer it was read into (a large message
        is never copied here, unless it has lines to unstuff). Timed by
        progress: each block gives the client data_timeout more, so a slow
        but steady transfer of any size goes on.
        """
        reader = self._reader
        # The reader pauses the socket beyond twice its limit: in DATA, let
        # it hold a block or two rather than a command line's worth.
        reader._limit = READ_SIZE
        try:
            buffer, found, too_big = await self._read_to_terminator(reader)
        finally:
            reader._limit = self.line_length_limit
        leftover = bytes(buffer[found + len(TERMINATOR):])
        if leftover:
            reader._buffer[0:0] = leftover  # pipelined commands after the dot
        if too_big or found > self.max_message_size + 2:
            return None
        del buffer[found + 2:]
        # Dot-unstuffing (RFC 5321 4.5.2): every line that starts with "."
        # loses that first dot. The leading CRLF makes line 1 a line start.
        if buffer.find(b"\r\n.") >= 0:
            buffer = buffer.replace(b"\r\n.", b"\r\n")
        del buffer[:2]
        return buffer

    async def _read_to_terminator(self, reader: asyncio.StreamReader) -> tuple[bytearray, int, bool]:
        # A leading CRLF that the client never sent lets one search find a
        # terminator at the very start (the empty message) too.
        buffer = bytearray(b"\r\n")
        searched = 0
        too_big = False
        limit = self.max_message_size + 2
        while True:
            found = buffer.find(TERMINATOR, searched)
            if found >= 0:
                return buffer, found, too_big
            searched = max(0, len(buffer) - len(TERMINATOR) + 1)
            self._reset_timeout(self.data_timeout)
            block = await reader.read(READ_SIZE)
            if not block:
                raise ConnectionResetError("connection closed during DATA")
            buffer += block
            if len(buffer) > limit + len(TERMINATOR):
                # Keep reading to the end so the session stays in step, but
                # keep only what could still hold the terminator.
                too_big = True
                del buffer[: len(buffer) - 2 * len(TERMINATOR)]
                searched = 0


class GatewaySMTP(_EdgeMixin, SMTP):
    pass


class GatewayLMTP(_EdgeMixin, LMTP):
    pass


def make_server(handler, *, protocol: str, allowed_clients, max_message_size: int, hostname: str | None = None,
                registry: set | None = None, admission: Admission | None = None,
                idle_timeout: float = IDLE_TIMEOUT, data_timeout: float = DATA_TIMEOUT):
    """A factory for asyncio's create_server: one protocol object a connection.

    `registry`, when given, holds every live session so a graceful stop can
    close them once the messages in flight are done; `admission` counts the
    connections against their limits.
    """
    base = GatewayLMTP if protocol == "lmtp" else GatewaySMTP
    cls = type(base.__name__, (base,), {"registry": registry, "admission": admission})

    def factory():
        server = cls(handler, data_size_limit=None, enable_SMTPUTF8=True, decode_data=False,
                     hostname=hostname, ident="mailseal", timeout=cls.idle_timeout)
        if registry is not None:
            registry.add(server)
        return server

    factory.cls = cls
    reconfigure(factory, allowed_clients=allowed_clients, max_message_size=max_message_size,
                idle_timeout=idle_timeout, data_timeout=data_timeout)
    return factory


def reconfigure(factory, *, allowed_clients, max_message_size: int, idle_timeout: float = IDLE_TIMEOUT,
                data_timeout: float = DATA_TIMEOUT) -> None:
    """New limits for the connections a factory makes from now on."""
    factory.cls.allowed_clients = tuple(allowed_clients)
    factory.cls.max_message_size = max_message_size
    factory.cls.idle_timeout = idle_timeout
    factory.cls.data_timeout = data_timeout


def session_xforward(session: Session) -> dict[str, str]:
    return dict(getattr(session, "xforward", {}))


def envelope_flags(envelope: Envelope) -> tuple[bool, bool]:
    """(smtputf8, 8bitmime) as the client declared them."""
    options = [o.upper() for o in envelope.mail_options]
    return bool(envelope.smtp_utf8), "BODY=8BITMIME" in options
