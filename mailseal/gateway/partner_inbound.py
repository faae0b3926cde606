"""The inbound listener's S/MIME and PGP/MIME opening, for local users whose keys we hold.

Called for mail that is not a mailseal bundle but says it is S/MIME
enveloped-data or PGP/MIME. When no recipient has a secret key of that
format, nothing happens here (the mail goes on as clear mail, to be opened
in the recipient's own client). Otherwise the recipients whose keys open it
get the plaintext with a Mailseal-Status trace header, recipients without
keys of that format get the message as it came, and the rest are refused
under the same rules and on_failure as bundles (tampered, malformed, no
matching key; and the sending domain's inbound policy, for which these
formats count as not sealed by mailseal).
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from .. import authenticity, headerfilter, partner_keys, partner_opening, policy
from ..keystore import fingerprint
from ..partner_errors import MalformedMessage, NotThisFormat, Tampered
from . import replies

_KIND = {policy.SMIME: "x509", policy.OPENPGP: "openpgp"}
INLINE_LIMIT = 64 * 1024


@lru_cache(maxsize=256)
def _key(kind: str, public: str, secret: bytes):
    if kind == "x509":
        return partner_keys.load_smime_identity(public, secret)
    return partner_keys.load_openpgp_key(secret)


def _candidates(handler, rcpts: list[str], form: str) -> dict[str, list]:
    out = {}
    for rcpt in rcpts:
        parsed = handler.address(rcpt)
        if parsed is None:
            continue
        keys = [(public, _key(kind, public, secret))
                for kind, public, secret in handler.ctx.keystore.partner_secrets_for(parsed) if kind == _KIND[form]]
        if keys:
            out[rcpt] = keys
    return out


def _signer_certificates(handler, message: bytes):
    """pysequoia's store callback: the OpenPGP certificates imported for the
    outer From: address (or its domain); a signature by anyone else names nobody."""
    try:
        senders = authenticity.senders([message])
    except authenticity.UnclearSender:
        senders = ()
    parsed = handler.address(senders[0]) if len(senders) == 1 else None
    texts = handler.ctx.keystore.partner_certificates_for(parsed).get("openpgp", []) if parsed else []
    if not texts:
        return None
    from ..partner_copy import _openpgp

    certificates = [_openpgp(t) for t in texts]
    return lambda _ids: certificates


async def handle(handler, server, envelope, session, rcpts: list[str], message: bytes, form: str,
                 smtputf8: bool, eight_bit: bool) -> tuple[str, dict] | None:
    """(decision for the log, outcome) or None when no recipient has keys of this format."""
    from .inbound import UNCLEAR_MARK, Refusal, senders_of, delivered_pieces, strip_mailseal_headers  # (a cycle)

    candidates = _candidates(handler, rcpts, form)
    if not candidates:
        return None
    try:
        try:
            signers = _signer_certificates(handler, message) if form == policy.OPENPGP else None
            if len(message) <= INLINE_LIMIT:
                result = partner_opening.open_for(message, form, candidates, signers)
            else:
                result = await asyncio.to_thread(partner_opening.open_for, message, form, candidates, signers)
        except (MalformedMessage, NotThisFormat):
            raise Refusal(replies.MALFORMED, "malformed") from None
        except Tampered:
            raise Refusal(replies.TAMPERED, "tampered") from None
        if result.opened is None:
            raise Refusal(replies.NO_IDENTITY, partner_opening.NO_MATCHING_KEY)
        unclear = handler._admit(senders_of([result.opened.message]), None)
    except Refusal as refusal:
        return f"refused:{refusal.reason}", handler._refuse(envelope, session, rcpts, message, refusal)
    refused = {r: Refusal(replies.NO_IDENTITY, reason) for r, reason in result.refused.items()}
    if refused and not handler.lmtp(server):
        refusal = next(iter(refused.values()))
        return f"refused:{refusal.reason}", handler._refuse(envelope, session, rcpts, message, refusal)
    outcome = {}
    for rcpt, refusal in refused.items():
        outcome.update(handler._refuse(envelope, session, [rcpt], message, refusal))
    opened = result.opened
    status = f"{partner_opening.SIGNED_BY}={','.join(opened.signers)}" if opened.signers else opened.signature
    status += f"; {UNCLEAR_MARK}" if unclear else ""
    trace = f"opened-{form}; {status}; key={fingerprint(opened.key)}"  # as `keys list` shows it
    inbound = handler.ctx.config.inbound
    pieces = delivered_pieces([opened.message], trace,
                                          headerfilter.for_opened_mail(inbound.strip_headers))
    readers = [r for r in candidates if r not in refused]
    outcome.update(await handler._deliver(envelope, session, readers, pieces, smtputf8, True))
    others = [r for r in rcpts if r not in candidates]
    if others:  # no key of this format here: passed on as it came
        data = strip_mailseal_headers(message, headerfilter.for_clear_mail(
            inbound.strip_headers, inbound.strip_headers_from_clear_mail))
        outcome.update(await handler._deliver(envelope, session, others, data, smtputf8, eight_bit))
    return f"opened-{form}", outcome
