"""What both listeners share: EHLO extensions, the MAIL size check, the
per-message log line, and replies for one transaction that became several
copies."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence

from ..addresses import AddressError, EightBitAddress, check_envelope_address, parse_address
from . import replies
from .replies import Reply

log = logging.getLogger("mailseal.gateway")
_SIZE = re.compile(r"SIZE=(\S*)", re.I)
# `user%domain@here` and `domain!user@here`: a next hop with Postfix's
# percent hack or bang-path swap delivers them to user@domain, which mailseal
# would not have decided for (a `require` bypass). A quoted `@` is the same.
_SOURCE_ROUTING = frozenset("%!@")


def log_safe(text: str) -> str:
    """A client-supplied value as it may stand in a log line: every character
    that is not printable (ESC, other controls, bidi and format marks, line
    separators) and the backslash written as a Python escape, so no client
    can forge a log line or repaint a terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                   else f"\\U{ord(c):08x}" for c in text)


def queue_id() -> str:
    return os.urandom(6).hex().upper()


class BaseHandler:
    direction = "?"

    def __init__(self, context) -> None:
        self.ctx = context

    def size_limit(self) -> int:
        return self.ctx.config.server.max_message_size

    async def handle_EHLO(self, server, session, envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        extra = [f"250-SIZE {self.size_limit()}",
                 "250-ENHANCEDSTATUSCODES",
                 "250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"]
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(self, server, session, envelope, address: str, mail_options: list[str]) -> str:
        for option in mail_options:
            match = _SIZE.fullmatch(option)
            if match:
                # ASCII digits only: str.isdigit also takes "²", which int() refuses.
                if not (match.group(1).isascii() and match.group(1).isdigit()):
                    return str(replies.BAD_SIZE)
                if int(match.group(1)) > self.size_limit():
                    return str(replies.MESSAGE_TOO_BIG)
        if self.ctx.stopping:
            return str(replies.SHUTTING_DOWN)
        refusal = None if address in ("<>", "") else self.address_refusal(envelope, address, sender=True)
        if refusal is not None:
            return str(refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_exception(self, error: Exception) -> str:
        """Our own fault (bad input has its own 5xx replies): 451, so the
        client tries again. Never a traceback to the client, and only the
        error's type in the log: its text may quote the message."""
        log.error("%s: internal error: %s", self.direction, type(error).__name__)
        return str(replies.INTERNAL_ERROR)

    @staticmethod
    def accept(envelope, address: str, rcpt_options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    def rcpt_refusal(self, envelope, address: str) -> Reply | None:
        """Why RCPT refuses this recipient, or None: one too many for the
        transaction (452, the client sends the rest in another), or the address."""
        if len(envelope.rcpt_tos) >= self.ctx.config.server.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        return self.address_refusal(envelope, address, sender=False)

    @staticmethod
    def address_refusal(envelope, address: str, *, sender: bool) -> Reply | None:
        """Why MAIL (sender) or RCPT refuses this address at the edge, or None.

        The reply never repeats the address: it may hold control characters.
        A recipient whose local part holds source-routing syntax (`%`, `!`)
        is refused: the next hop could route it elsewhere than it reads.
        """
        try:
            check_envelope_address(address, bool(envelope.smtp_utf8))
        except EightBitAddress:
            return replies.EIGHT_BIT_ADDRESS
        except Exception:  # noqa: BLE001 - whatever a parser raises on hostile input, it is bad input
            return replies.BAD_SENDER_SYNTAX if sender else replies.BAD_RECIPIENT_SYNTAX
        if not sender and not _SOURCE_ROUTING.isdisjoint(address.rpartition("@")[0]):
            return replies.SOURCE_ROUTED
        return None

    @staticmethod
    def address(text: str):
        try:
            return parse_address(text)
        except Exception:  # noqa: BLE001 - AddressError, or a parser's failure on hostile input
            return None

    def lmtp(self, server) -> bool:
        from aiosmtpd.lmtp import LMTP

        return isinstance(server, LMTP)

    def finish(self, server, rcpts: Sequence[str], outcome: dict[str, Reply]) -> str:
        """The reply (SMTP) or replies (LMTP, one a recipient in RCPT order)."""
        if self.lmtp(server):
            return "\r\n".join(str(outcome[r]) for r in rcpts)
        return str(combine([outcome[r] for r in rcpts]))

    def log_message(self, qid: str, server, session, envelope, decision: str, outcome: dict[str, Reply],
                    started: float, message_id: str) -> None:
        """The message's one log line (docs/OPERATIONS.md, Logs): never content."""
        rcpts = list(envelope.rcpt_tos)
        if self.lmtp(server):
            answered = ",".join(dict.fromkeys(_short(outcome[r]) for r in rcpts if r in outcome)) or "-"
        else:
            answered = _short(combine([outcome[r] for r in rcpts])) if outcome else "-"
        next_hop = ",".join(sorted({str(r.code) for r in outcome.values()})) or "-"
        queued = sorted({m.group(1) for r in outcome.values() if r.ok for m in [_QUEUED.search(r.text)] if m})
        fields = {"id": qid, "direction": self.direction,
                  "queue_id": log_safe(getattr(session, "xforward", {}).get("IDENT") or "") or None,
                  "from": log_safe(envelope.mail_from or ""), "message_id": log_safe(message_id) or None,
                  "rcpts": len(rcpts),
                  **recipients_field([self._canonical(r) for r in rcpts], self.ctx.config.server.log_recipients),
                  "decision": decision, "reply": answered, "next_hop": next_hop,
                  "next_queue_id": ",".join(queued) or None, "took_ms": round((time.monotonic() - started) * 1000)}
        log.info(format_fields(fields), extra={"fields": fields})
        self.ctx.count(self.direction, decision, outcome, time.monotonic() - started)

    def _canonical(self, rcpt: str) -> str:
        # Logged in canonical form (IDNA domain): greppable, and no raw bytes of the client's.
        parsed = self.address(rcpt)
        return parsed.owner if parsed is not None else "invalid"

    def log_rcpt_refused(self, address: str | None, reason: str, reply: Reply | str) -> None:
        """A recipient refused at RCPT; `address` None when it must not be repeated (bad syntax)."""
        text = reply if isinstance(reply, str) else str(reply)
        reason = _RCPT_REASONS.get(reply, reason) if isinstance(reply, Reply) else reason
        fields = {"event": "rcpt-refused", "direction": self.direction,
                  **(recipients_field([address], self.ctx.config.server.log_recipients) if address else {}),
                  "reason": reason,
                  "reply": " ".join(text.split()[:2])}
        log.info(format_fields(fields), extra={"fields": fields})
        self.ctx.metrics.rcpt_refused(self.direction, reason)


def recipients_field(rcpts: Sequence[str], how: str) -> dict:
    """[server] log_recipients: "full" (the addresses), "domains" (their
    domains, each once), "count" (only the count, logged anyway)."""
    if how == "full":
        return {"to": list(rcpts)}
    if how == "domains":
        return {"to_domains": sorted({r.rpartition("@")[2].lower() for r in rcpts})}
    return {}


_QUEUED = re.compile(r"queued as ([0-9A-Za-z]{4,40})")


def _short(reply: Reply) -> str:
    """`250 2.0.0`: the code and enhanced status, not the text (it may quote content)."""
    status = reply.text.split(None, 1)[0] if reply.text else ""
    return f"{reply.code} {status}" if re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status) else str(reply.code)


# Refusals from rcpt_refusal that are not a bad address, named as such in the log.
_RCPT_REASONS = {replies.TOO_MANY_RECIPIENTS: "too-many-recipients", replies.SOURCE_ROUTED: "source-routed"}


def format_fields(fields: dict) -> str:
    """key=value pairs for the text log; values with spaces quoted, empty ones left out."""
    out = []
    for key, value in fields.items():
        if value is None or (key in ("id", "direction") and "event" not in fields):
            continue
        text = ",".join(value) if isinstance(value, list) else str(value)
        if key == "from" or key == "to":
            text = ",".join(f"<{v}>" for v in value) if key == "to" else f"<{text}>"
        elif " " in text or not text:
            text = '"' + text.replace('"', "'") + '"'
        out.append(f"{key.replace('_', '-')}={text}")
    prefix = "".join(f"{fields[k]} " for k in ("id", "direction") if k in fields and "event" not in fields)
    return prefix + " ".join(out)


def combine(outcomes: Sequence[Reply]) -> Reply:
    """One SMTP reply for a transaction that became several copies.

    All accepted: the (first) acceptance. All refused the same way: that
    refusal. Anything mixed: 451, so the MTA retries; a retry may duplicate a
    copy already delivered but never loses one.
    """
    if all(r.ok for r in outcomes):
        return outcomes[0]
    if all(not r.ok for r in outcomes) and len({(r.code, r.text) for r in outcomes}) == 1:
        return outcomes[0]
    if all(r.permanent for r in outcomes):
        return outcomes[0]
    return replies.PARTIAL_FAILURE


def message_id(data: bytes) -> str:
    head = data[: data.find(b"\r\n\r\n") if b"\r\n\r\n" in data[:65536] else 65536]
    match = re.search(rb"(?im)^message-id:\s*(<[^>\r\n]{1,200}>)", head)
    return match.group(1).decode("ascii", "replace") if match else ""
