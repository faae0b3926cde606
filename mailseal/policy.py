"""Pure decisions: for each recipient, seal, pass in clear, or refuse.

Deciding is kept apart from changing the message (as GNU Mailman does):
this module looks at a policy and the keys found, and at which envelope
recipients the To/Cc headers name; it never touches message bytes, SMTP or
SQL, so every rule here is testable on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from .age import Recipient

REQUIRE, OPPORTUNISTIC, PLAIN = "require", "opportunistic", "plain"
# Copy formats: a mailseal bundle, PGP/MIME, S/MIME (config.FORMATS).
AGE, OPENPGP, SMIME = "age", "openpgp", "smime"
DEFAULT_ORDER = (AGE, OPENPGP, SMIME)


class Action(Enum):
    SEAL = "seal"
    PASS = "pass"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    action: Action
    policy: str
    keys: tuple[Recipient, ...] = ()
    reason: str = ""
    format: str = AGE
    certificates: tuple[str, ...] = ()  # PGP/MIME and S/MIME: the certificates (stored text)

    @property
    def post_quantum(self) -> bool:
        return any(k.post_quantum for k in self.keys)


def decide(policy: str, keys: Sequence[Recipient], certificates: Mapping[str, Sequence[str]] | None = None,
           order: Sequence[str] = DEFAULT_ORDER) -> Decision:
    """One recipient's fate under its policy, given the usable keys found.

    The format is the first in `order` the recipient has usable keys for:
    age keys (`keys`), or certificates by format (`certificates`, OPENPGP
    and SMIME). When a recipient has both post-quantum and classic age keys
    (a partner in the middle of moving to post-quantum), only the
    post-quantum ones are used: the recipient holds that identity, and a
    classic stanza beside it would weaken the copy.
    """
    if policy == PLAIN:
        return Decision(Action.PASS, policy, (), "policy plain")
    for form in order:
        if form == AGE and keys:
            pq = tuple(k for k in keys if k.post_quantum)
            return Decision(Action.SEAL, policy, pq or tuple(keys), "key found")
        if form != AGE and certificates and certificates.get(form):
            return Decision(Action.SEAL, policy, (), "certificate found", form, tuple(certificates[form]))
    if policy == REQUIRE:
        return Decision(Action.REFUSE, policy, (), "policy require and no usable key")
    return Decision(Action.PASS, policy, (), "no key (opportunistic)")


@dataclass(frozen=True)
class Copy:
    """One message to send: to these envelope recipients, sealed or not."""

    rcpts: tuple[str, ...]
    sealed: bool
    keys: tuple[Recipient, ...] = ()
    format: str = AGE
    certificates: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if not self.sealed:
            return "clear"
        if self.format != AGE:
            return self.format
        return "pq" if self.keys[0].post_quantum else "classic"


def plan_copies(decisions: dict[str, Decision], named_in_headers: Iterable[str]) -> list[Copy]:
    """Split one transaction into the copies to send.

    * recipients that pass in clear share one unchanged copy;
    * sealed recipients that To/Cc name share one sealed copy per format
      (one stanza, or one recipient info, each); age copies are split in two
      when some have post-quantum and some only classic keys, since the two
      kinds never share a bundle, and bundles, PGP/MIME and S/MIME never
      share a copy;
    * a sealed recipient that no header names (a Bcc) gets a copy of its own,
      so nobody learns who else received it.
    Refused recipients must have been filtered out already.
    """
    named = set(named_in_headers)
    clear = tuple(r for r, d in decisions.items() if d.action is Action.PASS)
    copies = [Copy(clear, sealed=False)] if clear else []
    shared: dict[tuple[str, bool], list[str]] = {}
    for rcpt, decision in decisions.items():
        if decision.action is Action.REFUSE:
            raise ValueError(f"{rcpt} was refused and cannot be in a copy")
        if decision.action is not Action.SEAL:
            continue
        if rcpt in named:
            shared.setdefault((decision.format, decision.post_quantum), []).append(rcpt)
        else:
            copies.append(Copy((rcpt,), True, decision.keys, decision.format, decision.certificates))
    for form, pq in sorted(shared, key=lambda group: (group[0] != AGE, group[0], not group[1])):
        rcpts = shared[(form, pq)]
        keys = tuple(dict.fromkeys(k for r in rcpts for k in decisions[r].keys))
        certificates = tuple(dict.fromkeys(c for r in rcpts for c in decisions[r].certificates))
        copies.append(Copy(tuple(rcpts), True, keys, form, certificates))
    return copies
