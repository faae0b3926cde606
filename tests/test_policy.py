"""Pure decisions and copy planning: no SMTP, no SQL."""

from __future__ import annotations

import pytest

from mailseal import age, policy
from mailseal.policy import Action, decide, plan_copies

PQ = [age.generate().recipient() for _ in range(3)]
CLASSIC = [age.generate(classic=True).recipient() for _ in range(2)]


@pytest.mark.parametrize("chosen, keys, action", [
    ("require", [PQ[0]], Action.SEAL),
    ("require", [], Action.REFUSE),
    ("opportunistic", [PQ[0]], Action.SEAL),
    ("opportunistic", [], Action.PASS),
    ("plain", [PQ[0]], Action.PASS),
    ("plain", [], Action.PASS),
])
def test_decide(chosen, keys, action):
    assert decide(chosen, keys).action is action


def test_post_quantum_keys_win_over_classic_for_one_recipient():
    d = decide("opportunistic", [CLASSIC[0], PQ[0]])
    assert d.keys == (PQ[0],) and d.post_quantum


def test_copies_to_cc_share_bcc_alone_kinds_apart():
    decisions = {
        "to1@x.test": decide("opportunistic", [PQ[0]]),
        "cc1@x.test": decide("opportunistic", [PQ[1]]),
        "old@x.test": decide("opportunistic", [CLASSIC[0]]),
        "bcc@x.test": decide("opportunistic", [PQ[2]]),
        "clear1@x.test": decide("opportunistic", []),
        "clear2@x.test": decide("plain", [PQ[0]]),
    }
    copies = plan_copies(decisions, {"to1@x.test", "cc1@x.test", "old@x.test", "clear1@x.test"})
    by_rcpts = {c.rcpts: c for c in copies}
    assert set(by_rcpts) == {("clear1@x.test", "clear2@x.test"), ("bcc@x.test",),
                             ("to1@x.test", "cc1@x.test"), ("old@x.test",)}
    assert not by_rcpts[("clear1@x.test", "clear2@x.test")].sealed
    assert by_rcpts[("bcc@x.test",)].keys == (PQ[2],)
    assert by_rcpts[("to1@x.test", "cc1@x.test")].keys == (PQ[0], PQ[1])
    assert by_rcpts[("old@x.test",)].kind == "classic"
    for copy in copies:  # never both kinds in one bundle
        assert len({k.post_quantum for k in copy.keys}) <= 1
    # every recipient is in exactly one copy
    assert sorted(r for c in copies for r in c.rcpts) == sorted(decisions)
    # nobody decided "seal" gets a clear copy, and each sealed copy opens with each recipient's own key
    for copy in copies:
        for rcpt in copy.rcpts:
            assert copy.sealed == (decisions[rcpt].action is Action.SEAL), (rcpt, copy)
            assert set(decisions[rcpt].keys) <= set(copy.keys)


def test_refused_recipients_cannot_be_planned():
    with pytest.raises(ValueError):
        plan_copies({"a@x.test": decide("require", [])}, set())


def test_same_key_for_two_recipients_gives_one_stanza():
    decisions = {"a@x.test": decide("opportunistic", [PQ[0]]), "b@x.test": decide("opportunistic", [PQ[0]])}
    [copy] = plan_copies(decisions, {"a@x.test", "b@x.test"})
    assert copy.keys == (PQ[0],)
    assert policy.Copy(("x",), False).kind == "clear"


# --- S/MIME and OpenPGP recipients ---------------------------------------------------------

CERTS = {policy.OPENPGP: ["pgp-cert"], policy.SMIME: ["x509-cert"]}


@pytest.mark.parametrize("order, keys, certificates, form", [
    (policy.DEFAULT_ORDER, [PQ[0]], CERTS, policy.AGE),
    (policy.DEFAULT_ORDER, [], CERTS, policy.OPENPGP),
    (policy.DEFAULT_ORDER, [], {policy.SMIME: ["x509-cert"]}, policy.SMIME),
    ((policy.SMIME, policy.AGE), [PQ[0]], CERTS, policy.SMIME),
    ((policy.OPENPGP,), [PQ[0]], {policy.SMIME: ["x509-cert"]}, None),
])
def test_the_first_format_in_order_with_keys_wins(order, keys, certificates, form):
    d = decide("require", keys, certificates, order)
    if form is None:
        assert d.action is Action.REFUSE
        return
    assert d.action is Action.SEAL and d.format == form
    assert d.certificates == (() if form == policy.AGE else tuple(certificates[form]))


def test_plain_never_looks_at_certificates():
    assert decide("plain", [], CERTS).action is Action.PASS


def test_formats_never_share_a_copy_and_bcc_stays_alone():
    decisions = {
        "a@x.test": decide("require", [PQ[0]]),
        "b@x.test": decide("require", [], CERTS),
        "c@x.test": decide("require", [], {policy.OPENPGP: ["other-pgp"]}),
        "d@x.test": decide("require", [], {policy.SMIME: ["x509-cert"]}),
        "e@x.test": decide("require", [], {policy.SMIME: ["bcc-cert"]}),
        "f@x.test": decide("opportunistic", []),
    }
    copies = plan_copies(decisions, ["a@x.test", "b@x.test", "c@x.test", "d@x.test", "f@x.test"])
    by_rcpts = {c.rcpts: c for c in copies}
    assert set(by_rcpts) == {("f@x.test",), ("a@x.test",), ("b@x.test", "c@x.test"), ("d@x.test",),
                             ("e@x.test",)}
    assert by_rcpts[("b@x.test", "c@x.test")].kind == "openpgp"
    assert by_rcpts[("b@x.test", "c@x.test")].certificates == ("pgp-cert", "other-pgp")
    assert by_rcpts[("e@x.test",)].kind == "smime" and by_rcpts[("e@x.test",)].certificates == ("bcc-cert",)
    assert by_rcpts[("a@x.test",)].kind == "pq" and not by_rcpts[("f@x.test",)].sealed
