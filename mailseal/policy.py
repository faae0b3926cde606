"""Pure decisions: for each recipient, seal, pass in clear, or refuse.

Deciding is kept apart from changing the message (as GNU Mailman does):
this module looks at a policy and the keys found, and at which envelope
recipients the To/Cc headers name; it never touches message bytes, SMTP or
SQL, so every rule here is testable on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .age import Recipient

REQUIRE, OPPORTUNISTIC, PLAIN = "require", "opportunistic", "plain"


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

    @property
    def post_quantum(self) -> bool:
        return any(k.post_quantum for k in self.keys)


def decide(policy: str, keys: Sequence[Recipient]) -> Decision:
    """One recipient's fate under its policy, given the usable keys found.

    When a recipient has both post-quantum and classic keys (a partner in the
    middle of moving to post-quantum), only the post-quantum ones are used:
    the recipient holds that identity, and a classic stanza beside it would
    weaken the copy.
    """
    if policy == PLAIN:
        return Decision(Action.PASS, policy, (), "policy plain")
    if keys:
        pq = tuple(k for k in keys if k.post_quantum)
        return Decision(Action.SEAL, policy, pq or tuple(keys), "key found")
    if policy == REQUIRE:
        return Decision(Action.REFUSE, policy, (), "policy require and no usable key")
    return Decision(Action.PASS, policy, (), "no key (opportunistic)")


@dataclass(frozen=True)
class Copy:
    """One message to send: to these envelope recipients, sealed or not."""

    rcpts: tuple[str, ...]
    sealed: bool
    keys: tuple[Recipient, ...] = ()

    @property
    def kind(self) -> str:
        if not self.sealed:
            return "clear"
        return "pq" if self.keys[0].post_quantum else "classic"


def plan_copies(decisions: dict[str, Decision], named_in_headers: Iterable[str]) -> list[Copy]:
    """Split one transaction into the copies to send.

    * recipients that pass in clear share one unchanged copy;
    * sealed recipients that To/Cc name share one sealed copy (one stanza
      each), split in two when some have post-quantum and some only classic
      keys, since the two kinds never share a bundle;
    * a sealed recipient that no header names (a Bcc) gets a copy of its own,
      so nobody learns who else received it.
    Refused recipients must have been filtered out already.
    """
    named = set(named_in_headers)
    clear = tuple(r for r, d in decisions.items() if d.action is Action.PASS)
    copies = [Copy(clear, sealed=False)] if clear else []
    shared: dict[bool, list[str]] = {True: [], False: []}
    for rcpt, decision in decisions.items():
        if decision.action is Action.REFUSE:
            raise ValueError(f"{rcpt} was refused and cannot be in a copy")
        if decision.action is not Action.SEAL:
            continue
        if rcpt in named:
            shared[decision.post_quantum].append(rcpt)
        else:
            copies.append(Copy((rcpt,), True, decision.keys))
    for pq in (True, False):
        if shared[pq]:
            keys = tuple(dict.fromkeys(k for r in shared[pq] for k in decisions[r].keys))
            copies.append(Copy(tuple(shared[pq]), True, keys))
    return copies
