"""`mailseal explain ADDRESS` and `[outbound] mode = "shadow"`: what would
happen, said before it happens, through the real CLI and a real daemon."""

from __future__ import annotations

import json

from mailseal import age, bundle

from .conftest import run_cli
from .harness import Daemon, Sink, smtp_transaction
from .test_quarantine_release import one_line

MESSAGE = (b"From: alice@a.test\r\nTo: bob@b.test, x@secret.test\r\nSubject: shadow\r\n"
           b"Message-ID: <shadow@a.test>\r\n\r\nnothing changes\r\n")


def explained(daemon: Daemon, address: str) -> dict:
    return json.loads(daemon.cli("explain", address, "--json"))


def test_explain_names_the_policy_the_key_and_the_outcome(tmp_path):
    d = Daemon(tmp_path / "a", outbound={"next_hop": "127.0.0.1:9"})
    bob, old, evil = age.generate(), age.generate(classic=True), age.generate()
    d.cli("keys", "import", "bob@b.test", str(bob.recipient()))
    d.cli("keys", "import", "bob@b.test", str(old.recipient()))  # classic beside post-quantum
    d.cli("keys", "import", "@b.test", str(age.generate().recipient()))
    d.cli("keys", "import", "eve@e.test", str(evil.recipient()))
    d.cli("keys", "revoke", "eve@e.test")
    d.cli("policy", "set", "@b.test", "require")
    d.cli("policy", "set", "@secret.test", "require")
    d.cli("keys", "generate", "@a.test")
    keys = {k["recipient"]: k for k in json.loads(d.cli("keys", "list", "--json"))}

    # A +tag, another spelling: the domain's policy, the base address's key.
    text = d.cli("explain", "Bob+Lists@B.TEST")
    assert "address:        bob+lists@b.test (given as Bob+Lists@B.TEST)" in text
    assert "lookup order:   bob+lists@b.test, bob@b.test, @b.test" in text
    assert "policy:         require, set for @b.test (the domain)" in text
    bob_fp = keys[str(bob.recipient())]["fingerprint"]
    assert f"seals to:       mlkem768x25519 {bob_fp} of bob@b.test (the address without its +tag; active" in text
    assert f"{keys[str(old.recipient())]['fingerprint']} of bob@b.test" in text and \
        "classic key beside a post-quantum one" in text
    assert "a more specific owner has a usable key" in text  # the @b.test key
    assert "outbound:       seal (post-quantum)" in text
    assert "inbound:        no local identity" in text

    e = explained(d, "bob+lists@b.test")
    assert e["action"] == "seal" and [k["fingerprint"] for k in e["keys"]] == [bob_fp]

    e = explained(d, "x@secret.test")
    assert e["action"] == "refuse" and e["policy"] == "require" and e["keys"] == []
    assert "refuse the recipient at RCPT (550 5.7.1)" in d.cli("explain", "x@secret.test")

    e = explained(d, "eve@e.test")
    assert e["action"] == "clear" and e["policy_source"] == "no policy set: [outbound] default_policy"
    assert [k["why"] for k in e["passed_over"]] == ["revoked"]

    e = explained(d, "ceo@a.test")
    assert e["action"] == "clear"
    assert [(k["owner"], k["found_for"]) for k in e["inbound"]] == [("@a.test", "the domain")]
    assert "inbound opens:  mlkem768x25519" in d.cli("explain", "ceo@a.test")

    for args, fragment in ((("explain", "not an address"), "'not an address'"), (("explain",), "required")):
        result = run_cli("-c", str(d.config), *args)
        assert result.returncode == 2 and fragment in one_line(result)
    fresh = Daemon(tmp_path / "fresh", outbound={"next_hop": "127.0.0.1:9"})
    result = run_cli("-c", str(fresh.config), "explain", "bob@b.test")
    assert result.returncode == 2 and "does not exist" in one_line(result)


def test_shadow_mode_logs_what_would_happen_and_changes_nothing(tmp_path):
    with Sink() as sink:
        d = Daemon(tmp_path / "a", outbound={"next_hop": f"127.0.0.1:{sink.port}", "mode": "shadow"})
        d.cli("keys", "import", "bob@b.test", str(age.generate().recipient()))
        d.cli("policy", "set", "@secret.test", "require")
        assert "but [outbound] mode = \"shadow\"" in d.cli("explain", "x@secret.test")
        d.start()
        try:
            t = smtp_transaction(d.outbound_port, "alice@a.test", ["bob@b.test", "x@secret.test"], MESSAGE)
            assert [code for code, _ in t.rcpts] == [250, 250]  # require without a key: not refused
            assert t.data[0] == 250
            [got] = sink.wait(1)
            assert got.data == MESSAGE and not bundle.is_sealed(got.data)  # not sealed either
            assert got.rcpts == ["bob@b.test", "x@secret.test"]
        finally:
            d.stop()
        log = d.log_text()
        assert "outbound listener in shadow mode" in log
        assert "outbound shadow: would refuse a recipient at RCPT (policy require and no usable key)" in log
        assert "decision=shadow:pq+refuse" in log
