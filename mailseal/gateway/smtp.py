"""The SMTP/LMTP edge: aiosmtpd, with what a content filter next to Postfix needs.

* only `allowed_clients` may talk to us: anyone else gets 554 and is gone;
* SIZE is advertised from max_message_size, and oversize mail gets 552 5.3.4;
* DATA is read in bulk (not line by line), with dot-unstuffing, the size
  limit and pipelined commands after the final dot handled exactly, and
  lines of any length accepted up to the size limit;
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


def client_allowed(peer, networks: Sequence[ipaddress._BaseNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
    except (ValueError, TypeError, IndexError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


_PLAIN_ADDRESS = re.compile(r"<([^<>\s\"\\()@,:;]+@[^<>\s\"\\()@,:;]+|)>(.*)", re.S)


class _EdgeMixin:
    """Shared by the SMTP and LMTP servers; configured by make_server."""

    allowed_clients: Sequence[ipaddress._BaseNetwork] = ()
    max_message_size: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if not client_allowed(peer, self.allowed_clients):
            log.warning("refused connection from %s: not in allowed_clients", peer and peer[0])
            transport.write(str(replies.CLIENT_NOT_ALLOWED).encode() + b"\r\n")
            transport.close()
            self._refused = True
            return
        self._refused = False
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        if getattr(self, "_refused", False):
            return
        super().connection_lost(exc)

    @property
    def busy(self) -> bool:
        """True while a message is between MAIL and the reply to DATA."""
        return bool(self.envelope is not None and self.envelope.mail_from)

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_refused", False):
            return
        super().data_received(data)

    def eof_received(self):
        if getattr(self, "_refused", False):
            return False
        return super().eof_received()

    def _getaddr(self, arg: str):
        """`<local@domain> params` without the email package's full parser.

        aiosmtpd parses every MAIL and RCPT address with the RFC 5322 header
        parser, a large share of the per-message CPU; plain addresses (all
        but a few) take this fast path, anything unusual the full one.
        """
        match = _PLAIN_ADDRESS.fullmatch(arg.strip()) if arg else None
        if match is None:
            return super()._getaddr(arg)
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
            if not sep or name.upper() not in XFORWARD_NAMES:
                await self.push(str(replies.XFORWARD_BAD))
                return
            attrs[name.upper()] = value
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
        if content is None:
            self._set_post_data_state()
            await self.push(str(replies.MESSAGE_TOO_BIG))
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> bytearray | None:
        """The message after 354, unstuffed; None when it exceeded the limit.

        Reads in large blocks up to the terminator; anything after it (a
        pipelined QUIT or MAIL) goes back to the reader for the command loop.
        The message stays in the one buffer it was read into (a large message
        is never copied here, unless it has lines to unstuff).
        """
        reader = self._reader
        # A leading CRLF that the client never sent lets one search find a
        # terminator at the very start (the empty message) too.
        buffer = bytearray(b"\r\n")
        searched = 0
        too_big = False
        limit = self.max_message_size + 2
        while True:
            found = buffer.find(TERMINATOR, searched)
            if found >= 0:
                break
            searched = max(0, len(buffer) - len(TERMINATOR) + 1)
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
        leftover = bytes(buffer[found + len(TERMINATOR):])
        if leftover:
            reader._buffer[0:0] = leftover  # pipelined commands after the dot
        if too_big or found > limit:
            return None
        del buffer[found + 2:]
        # Dot-unstuffing (RFC 5321 4.5.2): every line that starts with "."
        # loses that first dot. The leading CRLF makes line 1 a line start.
        if buffer.find(b"\r\n.") >= 0:
            buffer = buffer.replace(b"\r\n.", b"\r\n")
        del buffer[:2]
        return buffer


class GatewaySMTP(_EdgeMixin, SMTP):
    pass


class GatewayLMTP(_EdgeMixin, LMTP):
    pass


def make_server(handler, *, protocol: str, allowed_clients, max_message_size: int, hostname: str | None = None,
                registry: set | None = None):
    """A factory for asyncio's create_server: one protocol object a connection.

    `registry`, when given, holds every live session so a graceful stop can
    close them once the messages in flight are done.
    """
    base = GatewayLMTP if protocol == "lmtp" else GatewaySMTP
    cls = type(base.__name__, (base,), {
        "allowed_clients": tuple(allowed_clients),
        "max_message_size": max_message_size,
        # The reader's limit: lines of any length up to the size limit
        # (sealing makes them safe; in clear they go on as they came).
        "line_length_limit": max_message_size + 1024,
    })

    def factory():
        server = cls(handler, data_size_limit=None, enable_SMTPUTF8=True, decode_data=False,
                     hostname=hostname, ident="mailseal", timeout=300)
        if registry is not None:
            registry.add(server)
        return server

    factory.cls = cls
    return factory


def reconfigure(factory, *, allowed_clients, max_message_size: int) -> None:
    """New limits for the connections a factory makes from now on."""
    factory.cls.allowed_clients = tuple(allowed_clients)
    factory.cls.max_message_size = max_message_size
    factory.cls.line_length_limit = max_message_size + 1024


def session_xforward(session: Session) -> dict[str, str]:
    return dict(getattr(session, "xforward", {}))


def envelope_flags(envelope: Envelope) -> tuple[bool, bool]:
    """(smtputf8, 8bitmime) as the client declared them."""
    options = [o.upper() for o in envelope.mail_options]
    return bool(envelope.smtp_utf8), "BODY=8BITMIME" in options
