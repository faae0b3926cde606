"""What mailseal would do with mail for one address, and why.

`outbound_decision` is the one place the outbound listener and `mailseal
explain` decide from: the policy found (most specific first), the keys the
keystore would seal to, then policy.decide. `explain` adds the reasons an
administrator needs: where the policy was found, which key was chosen, which
keys were passed over, and which local identities open inbound mail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import policy
from .addresses import Address, lookup_order
from .keystore.records import ENCRYPTION_KINDS, PARTNER_KINDS

SHADOW, ENFORCE = "shadow", "enforce"


def outbound_decision(store, address: Address, default_policy: str, order=policy.DEFAULT_ORDER
                      ) -> tuple[policy.Decision, tuple[str, str] | None]:
    """(the decision, (owner, policy) found or None when the default applies).

    `order` is the recipient domain's format order ([outbound] formats):
    S/MIME and OpenPGP certificates are looked up only when the recipient
    has no age key or its domain puts another format first, so the age path
    costs what it did."""
    found = store.policy_for(address)
    chosen = found[1] if found else default_policy
    keys = store.recipients_for(address) if chosen != policy.PLAIN else []
    if chosen == policy.PLAIN or (keys and order[0] == policy.AGE):
        return policy.decide(chosen, keys), found
    stored = store.partner_certificates_for(address)
    certificates = {policy.SMIME: stored.get("x509", ()), policy.OPENPGP: stored.get("openpgp", ())}
    return policy.decide(chosen, keys, certificates, order), found


def where(address: Address, owner: str) -> str:
    """How an owner in the lookup order relates to the address."""
    if owner == address.owner:
        return "the address"
    if owner == address.mailbox:
        return "the address without its +tag"
    if owner == "@" + address.domain:
        return "the domain"
    return "a parent domain"


def _key(record, address: Address, now: float) -> dict:
    return {"fingerprint": record.fingerprint, "kind": record.kind, "owner": record.owner,
            "found_for": where(address, record.owner), "status": record.status(now),
            "expires": None if record.expires is None else time.strftime("%Y-%m-%d", time.gmtime(record.expires))}


@dataclass
class Explanation:
    address: str
    lookup_order: list[str]
    policy: str
    policy_source: str
    action: str  # seal | clear | refuse, or None without an [outbound] section
    reason: str
    mode: str
    keys: list[dict] = field(default_factory=list)  # the keys a copy would be sealed to
    passed_over: list[dict] = field(default_factory=list)  # remote keys found but not used, and why
    inbound: list[dict] = field(default_factory=list)  # local identities that open mail for it


ACTIONS = {policy.Action.SEAL: "seal", policy.Action.PASS: "clear", policy.Action.REFUSE: "refuse"}


def explain(store, address: Address, outbound_config, parent_domains: bool = False,
            now: float | None = None) -> Explanation:
    now = time.time() if now is None else now
    order = lookup_order(address, parent_domains)
    # Encryption keys only: signing keys (sender authenticity) neither seal nor open.
    records = [r for owner in order for r in store.find(owner) if r.kind in ENCRYPTION_KINDS + PARTNER_KINDS]
    default = outbound_config.default_policy if outbound_config is not None else policy.OPPORTUNISTIC
    formats = outbound_config.formats_for(address.domain) if outbound_config is not None else policy.DEFAULT_ORDER
    decision, found = outbound_decision(store, address, default, formats)
    if found:
        source = f"set for {found[0]} ({where(address, found[0])})"
    elif outbound_config is not None:
        source = "no policy set: [outbound] default_policy"
    else:
        source = "no policy set and no [outbound] section: the built-in default"
    chosen = {str(k) for k in decision.keys} | set(decision.certificates)
    keys = [_key(r, address, now) for r in records if r.scope == "remote" and r.recipient in chosen]
    passed_over = []
    for r in records:
        if r.scope != "remote" or r.recipient in chosen:
            continue
        status = r.status(now)
        if status in ("revoked", "expired"):
            why = status
        elif decision.policy == policy.PLAIN:
            why = "policy plain: never sealed"
        elif decision.post_quantum and r.kind == "X25519" and r.owner in {k["owner"] for k in keys}:
            why = "classic key beside a post-quantum one"
        else:
            why = "a more specific owner has a usable key"
        passed_over.append({**_key(r, address, now), "why": why})
    inbound = [_key(r, address, now) for r in records if r.scope == "local"]
    mode = getattr(outbound_config, "mode", ENFORCE) if outbound_config is not None else ENFORCE
    return Explanation(address.owner, order, decision.policy, source,
                       ACTIONS[decision.action] if outbound_config is not None else "none",
                       decision.reason, mode, keys, passed_over, inbound)


def render(e: Explanation, given: str) -> str:
    def key_line(k: dict) -> str:
        expiry = f"expires {k['expires']}" if k["expires"] else "never expires"
        return f"{k['kind']} {k['fingerprint']} of {k['owner']} ({k['found_for']}; {k['status']}, {expiry})"

    lines = [f"address:        {e.address}" + (f" (given as {given})" if given != e.address else ""),
             f"lookup order:   {', '.join(e.lookup_order)}",
             f"policy:         {e.policy}, {e.policy_source}"]
    for k in e.keys:
        lines.append(f"seals to:       {key_line(k)}")
    for k in e.passed_over:
        lines.append(f"passed over:    {key_line(k)}: {k['why']}")
    sealed_as = {"x509": " (S/MIME)", "openpgp": " (PGP/MIME)", "X25519": " (classic)"}
    outcome = {"seal": "seal" + (sealed_as.get(e.keys[0]["kind"], " (post-quantum)") if e.keys else ""),
               "clear": "pass in clear", "refuse": "refuse the recipient at RCPT (550 5.7.1)",
               "none": "nothing: no [outbound] section"}[e.action]
    lines.append(f"outbound:       {outcome} ({e.reason})")
    if e.mode == SHADOW and e.action != "none":
        lines.append("                but [outbound] mode = \"shadow\": this is only logged; the mail passes "
                     "unchanged and RCPT is never refused")
    if e.inbound:
        for k in e.inbound:
            lines.append(f"inbound opens:  {key_line(k)}")
    else:
        lines.append("inbound:        no local identity: sealed mail for it is refused (550 5.7.5); clear mail "
                     "is delivered")
    return "\n".join(lines)
