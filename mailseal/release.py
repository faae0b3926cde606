"""`mailseal quarantine release`: quarantined mail on its way again.

A sealed message is opened again, once its cause is fixed (a key imported,
a clock corrected): it goes through the inbound listener's own handler, run
in this process on a private loopback port with the configuration's
keystore, replay cache, header filter and next hop, so it gets exactly what
`serve` would do (key lookup, replay claim, trace header), except that a
refusal is reported here instead of quarantining the message again. One
transaction a recipient: each gets its own verdict.

Anything else, or a sealed message released `as_is`, is handed to the
inbound next hop as received, without the fields the inbound path removes
from clear mail (Mailseal-* and, where configured, the verdict list), below a
trace header that says an administrator released it.

Only recipients whose delivery succeeded leave the entry; the entry goes
with the last one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

from . import headerfilter
from .config import Config, Endpoint
from .gateway.relay import XFORWARD_ATTRIBUTES, Envelope, SMTPNextHop, next_hop_for
from .gateway.replies import Reply
from .quarantine import Entry, Quarantine


def release(cfg: Config, quarantine: Quarantine, entry: Entry, message: bytes, *, open_it: bool
            ) -> dict[str, Reply]:
    """Deliver a quarantined message; the next hop's reply per recipient.

    The entry keeps the recipients that did not get it (all of them when
    none did) and is removed when none is left.
    """
    deliver = _open_again if open_it else _as_received
    outcome = asyncio.run(deliver(cfg, entry, message))
    left = [rcpt for rcpt in entry.rcpts if not outcome[rcpt].ok]
    if not left:
        quarantine.remove(entry.id)
    elif len(left) < len(entry.rcpts):
        quarantine.keep_only(entry, left)
    return outcome


def _envelope(entry: Entry, rcpts: list[str], pieces: list[bytes]) -> Envelope:
    return Envelope(entry.mail_from, tuple(rcpts), pieces,
                    smtputf8=not (entry.mail_from + "".join(rcpts)).isascii(),
                    eight_bit=not all(piece.isascii() for piece in pieces),
                    xforward={k: v for k, v in entry.client.items() if k in XFORWARD_ATTRIBUTES})


async def _as_received(cfg: Config, entry: Entry, message: bytes) -> dict[str, Reply]:
    strip = headerfilter.for_clear_mail(cfg.inbound.strip_headers, cfg.inbound.strip_headers_from_clear_mail)
    trace = f"Mailseal-Status: released from quarantine by an administrator; reason={entry.reason}\r\n"
    hop = next_hop_for(cfg.inbound.next_hop)
    try:
        return await hop.deliver(_envelope(entry, entry.rcpts, [trace.encode(), strip.message(message)]))
    finally:
        await hop.close()


async def _open_again(cfg: Config, entry: Entry, message: bytes) -> dict[str, Reply]:
    from .gateway.server import Gateway

    private = dataclasses.replace(
        cfg, outbound=None,
        inbound=dataclasses.replace(cfg.inbound, listen=Endpoint("127.0.0.1", 0), protocol="smtp",
                                    on_failure="reject"),
        server=dataclasses.replace(cfg.server, allowed_clients=(ipaddress.ip_network("127.0.0.1/32"),), workers=1))
    gateway = Gateway(private)
    try:
        await gateway.start()
        port = gateway.servers[0].sockets[0].getsockname()[1]
        listener = SMTPNextHop("127.0.0.1", port, helo="localhost")
        outcome: dict[str, Reply] = {}
        try:
            for rcpt in entry.rcpts:
                outcome.update(await listener.deliver(_envelope(entry, [rcpt], [message])))
        finally:
            await listener.close()
        return outcome
    finally:
        await gateway.stop()
        gateway.ctx.keystore.close()
        if gateway.ctx.replay_cache is not None:
            gateway.ctx.replay_cache.close()
