"""The outbound (sealing) listener: thin aiosmtpd hooks over pure decisions.

RCPT: the recipient's policy and keys decide seal, pass or refuse (550
5.7.1). DATA: decide again (a key revoked meanwhile gives 451 4.7.0), split
the transaction into copies (policy.plan_copies), seal the sealed ones off
the event loop, relay each copy, and answer only after the next hop did.

What the message says about itself changes no decision: a recipient with a
key gets a sealed copy even of mail that is already encrypted (double
encryption is harmless), and mail passes unchanged only to recipients whose
policy allows clear. encrypted.verify only names, in the log, clear copies
that are verifiably encrypted already.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import getaddresses

from .. import bundle, encrypted, explain, headerfilter, mime, partner_copy, policy
from ..keystore import KeystoreError
from . import replies
from .handler import BaseHandler, log, message_id, queue_id
from .relay import Envelope
from .replies import Reply
from .smtp import envelope_flags, session_xforward

INLINE_SEAL_LIMIT = 256 * 1024  # smaller messages are sealed on the loop: a thread costs more
# A Bcc list never travels in a sealed copy, shared or not; the rest of the
# message is sealed byte for byte (a malformed leading line included).
WITHOUT_BCC = headerfilter.HeaderFilter(("Bcc", "Resent-Bcc"), orphans=True)
INLINE_HEAD_LIMIT = 16 * 1024  # ... unless their header is longer, or 8-bit


def off_loop(message: bytes) -> bool:
    """Whether the work on this message belongs in a thread: a large one,
    and one whose header makes the work depend on what the sender wrote
    (long, or 8-bit and so re-encoded), so no client waits on another's."""
    if len(message) > INLINE_SEAL_LIMIT:
        return True
    head, _ = mime.split_head(message)
    return len(head) > INLINE_HEAD_LIMIT or not head.isascii()


async def _run(in_thread: bool, fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs) if in_thread else fn(*args, **kwargs)


def header_recipients(message: bytes) -> set[str]:
    """Owners (normalised addresses) that the first To and Cc fields name.

    A field that is too long for the outer header, or that the address
    parser cannot take apart (5,000 nested comments), names nobody: its
    recipients then get a copy each, which reveals no one to anyone.
    """
    head, _ = mime.split_head(message)
    try:
        fields = mime.fields(head, ("to", "cc"))
    except mime.MimeError:
        return set()
    owners: set[str] = set()
    seen = set()
    for field in fields:
        name = field.name.lower()
        if name in seen or len(field.raw) > bundle.OUTER_FIELD_LIMIT:
            continue
        seen.add(name)
        value = field.value.decode("utf-8", "replace").replace("\r", "").replace("\n", " ")
        try:
            addresses = getaddresses([value])
        except (RecursionError, ValueError, IndexError):
            continue
        for _, addr in addresses:
            parsed = BaseHandler.address(addr) if addr else None
            if parsed is not None:
                owners.add(parsed.owner)
    return owners


def plan(todo: dict[str, policy.Decision], message: bytes) -> tuple[list[policy.Copy], str, bytes]:
    """The copies to send, their summary for the log line, and the message
    sealed copies carry (without Bcc): all of it read from the header."""
    # Only shadow mode lets a refused recipient this far: "refuse" in the summary.
    refused = any(d.action is policy.Action.REFUSE for d in todo.values())
    planned = {r: d for r, d in todo.items() if d.action is not policy.Action.REFUSE}
    sealing = [r for r, d in planned.items() if d.action is policy.Action.SEAL]
    # Who the headers name only matters when several are sealed; envelope
    # and header spellings are compared canonically.
    owners = header_recipients(message) if len(sealing) > 1 else set()
    named = [r for r in sealing if BaseHandler.address(r).owner in owners]
    copies = policy.plan_copies(planned, named)
    kinds = {c.kind for c in copies} | ({"refuse"} if refused else set())
    if "clear" in kinds:
        found = encrypted.verify(message)
        kinds = kinds - {"clear"} | {f"clear-{found}" if found else "clear"}
    hidden = WITHOUT_BCC.message(message) if sealing else message
    return copies, "+".join(sorted(kinds)), hidden


class OutboundHandler(BaseHandler):
    direction = "outbound"
    # Signs with the envelope sender's key: whatever feeds this listener must
    # have authenticated that sender (Postfix: reject_sender_login_mismatch).
    signs = True

    def decide(self, address) -> policy.Decision:
        outbound = self.ctx.config.outbound
        return explain.outbound_decision(self.ctx.keystore, address, outbound.default_policy,
                                         outbound.formats_for(address.domain))[0]

    @property
    def shadow(self) -> bool:
        """[outbound] mode = "shadow": decide and log, change nothing."""
        return self.ctx.config.outbound.mode == explain.SHADOW

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]) -> str:
        refusal = self.address_refusal(envelope, address, sender=False)
        if refusal is not None:
            self.log_rcpt_refused(None, "bad-address", refusal)
            return str(refusal)
        parsed = self.address(address)
        if parsed is None:
            self.log_rcpt_refused(None, "bad-address", replies.BAD_ADDRESS)
            return str(replies.BAD_ADDRESS)
        try:
            decision = self.decide(parsed)
        except KeystoreError as exc:
            log.error("outbound: keystore: %s", exc)
            self.log_rcpt_refused(parsed.owner, "keystore-unavailable", replies.KEYSTORE_UNAVAILABLE)
            return str(replies.KEYSTORE_UNAVAILABLE)
        if decision.action is policy.Action.REFUSE:
            if not self.shadow:
                try:
                    expired = self.ctx.keystore.partner_certificate_expired(parsed)
                except KeystoreError:
                    expired = False
                text = replies.POLICY_CERTIFICATE_EXPIRED if expired else replies.POLICY_REQUIRES_KEY
                reply = f"550 {text.format(rcpt=address)}"
                # Logged in canonical form (IDNA): no raw bytes of the client's.
                self.log_rcpt_refused(parsed.owner, "policy-require", reply)
                return reply
            log.info("outbound shadow: would refuse a recipient at RCPT (%s)", decision.reason)
        if not hasattr(envelope, "decisions"):
            envelope.decisions = {}
        envelope.decisions[address] = decision
        return self.accept(envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope) -> str:
        started = time.monotonic()
        qid = queue_id()
        rcpts = list(envelope.rcpt_tos)
        message = envelope.content
        outcome: dict[str, Reply] = {}
        try:
            current = {r: self.decide(self.address(r)) for r in rcpts}
        except KeystoreError as exc:
            log.error("%s outbound: keystore: %s", qid, exc)
            outcome = dict.fromkeys(rcpts, replies.KEYSTORE_UNAVAILABLE)
            current = {}
        # A decision that changed since RCPT (a key revoked, a policy set)
        # is not acted on: 451, and the retry decides again at RCPT.
        changed = [r for r in current if current[r] != envelope.decisions.get(r)] if not self.shadow else []
        if changed and not self.lmtp(server):
            outcome = dict.fromkeys(rcpts, replies.DECISION_CHANGED)
        for r in changed:
            outcome.setdefault(r, replies.DECISION_CHANGED)
        todo = {r: d for r, d in current.items() if r not in outcome}
        summary = "changed" if changed else "-"
        if todo:
            in_thread = off_loop(message)
            copies, summary, hidden = await _run(in_thread, plan, todo, message)
            if self.shadow:
                # What would have happened is logged; the mail goes as it came.
                summary = "shadow:" + summary
                copies = [policy.Copy(tuple(todo), sealed=False)]
            results = await asyncio.gather(*(self._send(c, envelope, session, hidden if c.sealed else message,
                                                        in_thread) for c in copies))
            for result in results:
                outcome.update(result)
        self.log_message(qid, server, session, envelope, summary, outcome, started, message_id(message))
        return self.finish(server, rcpts, outcome)

    async def _send(self, copy: policy.Copy, envelope, session, message: bytes, in_thread: bool
                    ) -> dict[str, Reply]:
        smtputf8, eight_bit = envelope_flags(envelope)
        if copy.sealed:
            # The copy is bound to its envelope recipients: the receiving
            # gateway opens it for them and nobody else.
            bind = [self.address(r).owner for r in copy.rcpts]
            try:
                # Signed with the envelope sender's key, else its domain's (if we hold one).
                sender = self.address(envelope.mail_from) if envelope.mail_from else None
                signer = self.ctx.keystore.signing_key_for(sender) if sender and self.signs else None
                if copy.format != policy.AGE:  # PGP/MIME or S/MIME: no binding, no mailseal signature
                    data = await asyncio.to_thread(partner_copy.seal, copy.format, message, copy.certificates)
                else:
                    data = await _run(in_thread, bundle.seal, message, copy.keys, eol=b"\r\n", bind=bind,
                                      signer=signer)
            except Exception as exc:  # noqa: BLE001 - any failure: never send in clear
                log.error("outbound: sealing failed: %s", type(exc).__name__)
                return dict.fromkeys(copy.rcpts, replies.SEAL_FAILED)
            eight_bit = False  # the sealed form is 7-bit clean
        else:
            data = message
        next_hop = self.ctx.outbound_next_hop
        return await next_hop.deliver(Envelope(envelope.mail_from, copy.rcpts, data, smtputf8, eight_bit,
                                               session_xforward(session)))


class ForwardHandler(OutboundHandler):
    """`[outbound] forward_listen`: seals like the outbound listener, never
    signs. For mail from outside passed on (an alias to a remote address):
    its envelope sender was never authenticated, so signing it would lend
    our name to whoever wrote MAIL FROM."""

    direction = "forward"
    signs = False
