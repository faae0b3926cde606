"""The inbound (opening) listener.

A bundle for a recipient with a local identity is opened, its date and
serial are checked against the replay window and the durable cache, and the
original message is delivered with a Mailseal-Status trace header. Mailseal-*
headers are removed from whatever is delivered: nobody may forge our mark.
Refused mail follows on_failure: 550 5.7.x, or quarantine and 250.
"""

from __future__ import annotations

import asyncio
import time

from .. import age, authenticity, bundle, headerfilter, opening, partner_opening, replay, signing
from ..keystore import KeystoreError, fingerprint
from . import partner_inbound, replies
from .handler import BaseHandler, log, message_id, queue_id
from .relay import Envelope
from .replies import Reply
from .smtp import envelope_flags, session_xforward

TRACE_HEADER = b"Mailseal-Status"
INLINE_OPEN_LIMIT = 256 * 1024
# Opening costs one unwrap per stanza tried; a few are cheaper on the loop
# than a thread hand-off, more (an attacker's thousand stanzas) go to a thread.
INLINE_OPEN_TRIALS = 8
REFUSAL_REPLIES = {
    opening.NO_LOCAL_KEY: replies.NO_IDENTITY,
    opening.NO_MATCHING_KEY: replies.NO_IDENTITY,
    opening.NOT_BOUND: replies.NOT_BOUND,
    opening.UNBOUND_VERSION: replies.UNBOUND_VERSION,
}
AUTHENTICITY_REPLIES = {
    authenticity.SIGNATURE_INVALID: replies.SIGNATURE_INVALID,
    authenticity.KEY_REVOKED: replies.SIGNATURE_INVALID,
    authenticity.DOWNGRADE: replies.SIGNATURE_INVALID,
    authenticity.SIGNER_MISMATCH: replies.SIGNATURE_INVALID,
    authenticity.SIGNER_UNKNOWN: replies.NOT_SIGNED,
    authenticity.UNSIGNED: replies.NOT_SIGNED,
    authenticity.NOT_SEALED: replies.NOT_SEALED,
    authenticity.SENDER_UNCLEAR: replies.SENDER_UNCLEAR,
}
# What delivered mail whose sender could not be named says (under `any`).
UNCLEAR_MARK = "sender-unclear"


def strip_mailseal_headers(message: bytes, strip: headerfilter.HeaderFilter) -> bytes:
    """Clear mail as it is delivered: without Mailseal-* fields and whatever
    else `strip` names (docs/OPERATIONS.md)."""
    return strip.message(message)


def delivered_pieces(chunks: list[bytes], trace: str, strip: headerfilter.HeaderFilter) -> list[bytes]:
    """The opened message as it is delivered: trace header, then the original
    without the fields `strip` names (the receiving site's verdicts, Mailseal-*)
    and without leading continuation lines, still in its decrypted chunks (a
    large message is never joined into one more copy)."""
    # SMTP lines end in CRLF, whatever the sealed original used.
    return [TRACE_HEADER + b": " + trace.encode() + b"\r\n", *strip.chunks(chunks)]


REPLAY_REFUSALS = {
    replay.Replayed: (replies.REPLAYED, "replayed"),
    replay.TooOld: (replies.TOO_OLD, "too-old"),
    replay.FromTheFuture: (replies.FROM_THE_FUTURE, "from-the-future"),
    replay.InFlight: (replies.REPLAY_IN_FLIGHT, "in-flight"),
    replay.ClockWentBack: (replies.CLOCK_WENT_BACK, "clock-went-back"),
    replay.CacheUnavailable: (replies.REPLAY_CACHE_DOWN, "replay-cache-unavailable"),
}


def senders_of(chunks: list[bytes]) -> tuple[str, ...] | None:
    """Every From: mailbox (canonical), or None when the header does not
    name them beyond doubt (authenticity.senders)."""
    try:
        return authenticity.senders(chunks)
    except authenticity.UnclearSender:
        return None


class Refusal(Exception):
    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(reason)
        self.reply, self.reason = reply, reason


def sealed_size_limit(max_message_size: int) -> int:
    """What a bundle of a max_message_size message can weigh on the wire.

    base64 (4/3) in 76-character lines with CRLF (78/76), plus room for the
    headers, the key blob and STREAM tags: the inbound listener accepts that,
    so a message the sender's gateway accepted is not refused for sealing.
    """
    return max_message_size * 4 * 78 // (3 * 76) + 256 * 1024


class InboundHandler(BaseHandler):
    direction = "inbound"

    def size_limit(self) -> int:
        return sealed_size_limit(self.ctx.config.server.max_message_size)

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]) -> str:
        refusal = self.address_refusal(envelope, address, sender=False)
        if refusal is not None:
            self.log_rcpt_refused(None, "bad-address", refusal)
            return str(refusal)
        if self.address(address) is None:
            self.log_rcpt_refused(None, "bad-address", replies.BAD_ADDRESS)
            return str(replies.BAD_ADDRESS)
        return self.accept(envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope) -> str:
        started = time.monotonic()
        qid = queue_id()
        rcpts = list(envelope.rcpt_tos)
        message = envelope.content
        smtputf8, eight_bit = envelope_flags(envelope)
        mid = message_id(message)
        outcome: dict[str, Reply] = {}
        try:
            parts = bundle.split(message)
        except bundle.NotSealed:
            form = partner_opening.labelled_format(message)
            if form is not None:  # S/MIME or PGP/MIME: opened here for local users whose keys we hold
                try:
                    handled = await partner_inbound.handle(self, server, envelope, session, rcpts, message, form,
                                                           smtputf8, eight_bit)
                except KeystoreError as exc:
                    log.error("%s inbound: keystore: %s", qid, exc)
                    return self.finish(server, rcpts, dict.fromkeys(rcpts, replies.KEYSTORE_UNAVAILABLE))
                if handled is not None:
                    self.log_message(qid, server, session, envelope, handled[0], handled[1], started, mid)
                    return self.finish(server, rcpts, handled[1])
            try:
                unclear = self._admit(senders_of([message]), None)
            except Refusal as refusal:
                outcome = self._refuse(envelope, session, rcpts, message, refusal)
                self.log_message(qid, server, session, envelope, f"refused:{refusal.reason}", outcome, started, mid)
                return self.finish(server, rcpts, outcome)
            except KeystoreError as exc:
                log.error("%s inbound: keystore: %s", qid, exc)
                return self.finish(server, rcpts, dict.fromkeys(rcpts, replies.KEYSTORE_UNAVAILABLE))
            inbound = self.ctx.config.inbound
            data = strip_mailseal_headers(message, headerfilter.for_clear_mail(
                inbound.strip_headers, inbound.strip_headers_from_clear_mail))
            if unclear:
                data = TRACE_HEADER + b": clear; " + UNCLEAR_MARK.encode() + b"\r\n" + data
            outcome = await self._deliver(envelope, session, rcpts, data, smtputf8, eight_bit)
            self.log_message(qid, server, session, envelope, "clear", outcome, started, mid)
            return self.finish(server, rcpts, outcome)
        except bundle.MalformedBundle:
            parts = None
        try:
            if parts is None:
                raise Refusal(replies.MALFORMED, "malformed")
            opened, unentitled = await self._open(rcpts, message, parts)
            if opened is None:
                # Nobody in the transaction may have it: refused as one
                # (the same reason for all, or the first).
                raise next(iter(unentitled.values()))
            verdict = self._verdict(envelope, opened)
        except Refusal as refusal:
            outcome = self._refuse(envelope, session, rcpts, message, refusal)
            self.log_message(qid, server, session, envelope, f"refused:{refusal.reason}", outcome, started, mid)
            return self.finish(server, rcpts, outcome)
        except KeystoreError as exc:
            log.error("%s inbound: keystore: %s", qid, exc)
            return self.finish(server, rcpts, dict.fromkeys(rcpts, replies.KEYSTORE_UNAVAILABLE))

        claims, refused = await self._claim([r for r in rcpts if r not in unentitled], opened)
        refused = {**unentitled, **refused}
        try:
            if not refused:
                # The sealed form is no longer needed: let a large one go before
                # the opened copy is delivered (peak memory).
                parts = message = None
                envelope.content = envelope.original_content = None
            if refused and not self.lmtp(server):
                # One SMTP reply for all: a refusal for one recipient refuses the
                # lot. A temporary one (cache down) wins, so the MTA retries and
                # nothing is refused for good on a passing fault.
                self.ctx.replay_cache.release(list(set(claims.values())))
                refusals = list(refused.values())
                refusal = next((r for r in refusals if r.reply.temporary), refusals[0])
                outcome = self._refuse(envelope, session, rcpts, message, refusal)
                self.log_message(qid, server, session, envelope, f"refused:{refusal.reason}", outcome, started, mid)
                return self.finish(server, rcpts, outcome)
            for rcpt, refusal in refused.items():
                outcome.update(self._refuse(envelope, session, [rcpt], message, refusal))
            if claims:
                trace = (f"opened; {verdict.status}; serial={opened.serial}; sealed={opened.date}; "
                         f"key={fingerprint(str(opened.identity.recipient()))}")
                pieces = delivered_pieces(opened.chunks, trace,
                                          headerfilter.for_opened_mail(self.ctx.config.inbound.strip_headers))
                # Declared 8BITMIME whatever the content: harmless for 7-bit
                # mail, and no pass over a large message to find out.
                claimed = [r for r in rcpts if r in claims]
                delivered = await self._deliver(envelope, session, claimed, pieces, smtputf8, True)
                # A mailbox's claim holds once every recipient naming it was
                # accepted; otherwise it is released, so the retry is not a "replay".
                failed = {claims[rcpt] for rcpt, reply in delivered.items() if not reply.ok}
                if failed and not self.lmtp(server):
                    # One SMTP reply covers them all, so the MTA retries every
                    # recipient: release every claim (a recipient already
                    # accepted may get a duplicate; none is refused as a replay).
                    failed = set(claims.values())
                self.ctx.replay_cache.delivered(list(set(claims.values()) - failed))
                self.ctx.replay_cache.release(list(failed))
                outcome.update(delivered)
        except BaseException:
            # An unexpected failure (451) or a client gone (cancelled): the
            # retry must not meet a pending claim of ours and be refused.
            # (Claims already marked delivered are not touched by release.)
            self.ctx.replay_cache.release(list(set(claims.values())))
            raise
        self.log_message(qid, server, session, envelope, "opened", outcome, started, mid)
        return self.finish(server, rcpts, outcome)

    def _admit(self, senders: tuple[str, ...] | None, verdict: authenticity.Verdict | None) -> bool:
        """Raise Refusal when an inbound policy refuses this: the policy of
        every From: mailbox's domain, or, for a sender that could not be
        named (None), the strictest policy on file. Return whether the
        sender was unclear (and the mail goes, marked)."""
        store = self.ctx.keystore
        reason = None
        if senders is None:
            policy = authenticity.strictest(policy for _, policy, _ in store.list_inbound_policies())
            reason = authenticity.refusal(policy, verdict, unclear=True)
        for sender in senders or ():
            parsed = self.address(sender)
            found = store.inbound_policy_for(parsed) if parsed else None
            reason = authenticity.refusal(found[1] if found else None, verdict)
            if reason is not None:
                break
        if reason is not None:
            raise Refusal(AUTHENTICITY_REPLIES[reason], reason)
        return senders is None

    def _verdict(self, envelope, opened: bundle.Opened) -> authenticity.Verdict:
        """The sender signature checked against inner From: and envelope sender."""
        senders = senders_of(opened.chunks)
        signature = opened.signature
        keys = self.ctx.keystore.signer_keys(signature.signer) if signature is not None else signing.SignerKeys()
        verdict = authenticity.assess(signature, keys, senders, envelope.mail_from,
                                      self.ctx.config.inbound.signer_aliases)
        if self._admit(senders, verdict):
            return authenticity.Verdict(f"{verdict.status}; {UNCLEAR_MARK}", verdict.reason)
        return verdict

    def _mailbox(self, rcpt: str) -> str:
        """What a replay claim is keyed on: one claim per mailbox, however it is spelled."""
        parsed = self.address(rcpt)
        return parsed.mailbox if parsed else rcpt

    async def _open(self, rcpts: list[str], message: bytes, parts) -> tuple[bundle.Opened | None, dict[str, Refusal]]:
        """Open for each envelope recipient with its own identities; return the
        opened message (None if nobody may have it) and the refused recipients."""
        candidates = {}
        for rcpt in rcpts:
            parsed = self.address(rcpt)
            identities = self.ctx.keystore.identities_for(parsed) if parsed else []
            candidates[rcpt] = opening.Candidate(parsed.owner if parsed else None, identities)
        if not any(c.identities for c in candidates.values()):
            raise Refusal(replies.NO_IDENTITY, opening.NO_LOCAL_KEY)
        open_version1 = self.ctx.config.inbound.open_version1
        try:
            blob = bundle.read_keyblob(parts)
            if len(message) <= INLINE_OPEN_LIMIT and opening.trials(blob, candidates) <= INLINE_OPEN_TRIALS:
                result = opening.open_for(parts, blob, candidates, open_version1=open_version1)
            else:
                result = await asyncio.to_thread(opening.open_for, parts, blob, candidates,
                                                 open_version1=open_version1)
        except bundle.MalformedBundle:
            raise Refusal(replies.MALFORMED, "malformed") from None
        except age.AuthenticationError:
            raise Refusal(replies.TAMPERED, "tampered") from None
        refused = {rcpt: Refusal(REFUSAL_REPLIES[reason], reason) for rcpt, reason in result.refused.items()}
        return result.opened, refused

    async def _claim(self, rcpts: list[str], opened: bundle.Opened
                     ) -> tuple[dict[str, replay.Claim], dict[str, Refusal]]:
        """{rcpt: claim} and {rcpt: refusal}; the same mailbox named twice is claimed once."""
        mailboxes = {rcpt: self._mailbox(rcpt) for rcpt in rcpts}
        unique = list(dict.fromkeys(mailboxes.values()))
        results = await self.ctx.replay_cache.aclaim_all(unique, opened.serial, opened.tag, opened.date)
        by_mailbox = dict(zip(unique, results, strict=True))
        claims, refused = {}, {}
        for rcpt, mailbox in mailboxes.items():
            result = by_mailbox[mailbox]
            if isinstance(result, replay.Claim):
                claims[rcpt] = result
                continue
            if isinstance(result, replay.CacheUnavailable):
                log.error("inbound: %s", result)
            reply, reason = REPLAY_REFUSALS[type(result)]
            refused[rcpt] = Refusal(reply, reason)
        return claims, refused

    def _refuse(self, envelope, session, rcpts: list[str], message: bytes, refusal: Refusal) -> dict[str, Reply]:
        if refusal.reply.temporary or self.ctx.config.inbound.on_failure != "quarantine":
            return dict.fromkeys(rcpts, refusal.reply)
        try:
            entry = self.ctx.quarantine.put(message, envelope.mail_from, rcpts, refusal.reason,
                                            session_xforward(session) or {"peer": str(session.peer)})
        except OSError as exc:
            log.error("inbound: cannot quarantine: %s", exc)
            return dict.fromkeys(rcpts, replies.LOCAL_DELIVERY_FAILED)
        return dict.fromkeys(rcpts, replies.ok(f"quarantined as {entry} ({refusal.reason})"))

    async def _deliver(self, envelope, session, rcpts, data, smtputf8, eight_bit) -> dict[str, Reply]:
        return await self.ctx.inbound_next_hop.deliver(
            Envelope(envelope.mail_from, tuple(rcpts), data, smtputf8, eight_bit, session_xforward(session)))
