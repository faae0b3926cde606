"""The sealing side's promises, tried as an attacker through the real listeners
(issue 8 items 9-11, issue 9 item 7): any spelling of an address, mail that
only claims to be encrypted, Bcc lists, and hostile envelope addresses."""

from __future__ import annotations

import pytest

from mailseal import age, bundle

from .bundle_tools import decoded_parts
from .harness import Daemon, Sink, smtp_transaction

SECRET = b"the merger closes on friday"


def message(to: str = "ceo@b.test", head: bytes = b"", body: bytes = SECRET) -> bytes:
    return (b"From: alice@a.test\r\nTo: " + to.encode() + b"\r\nSubject: quarterly numbers\r\nMessage-ID: <m1@a.test>\r\n"
            + head + b"\r\n" + body + b"\r\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("promises")
    identities = {name: age.generate() for name in ("ceo", "joerg", "bob", "carol")}
    with Sink() as wire, Sink() as final:
        d = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"},
                   inbound={"next_hop": f"127.0.0.1:{final.port}"})
        # stored under one spelling, as an administrator may type it
        for owner, name in (("CEO@b.test", "ceo"), ("JÖRG@EXÄMPLE.test", "joerg"), ("Bob@B.test", "bob"),
                            ("carol@b.test", "carol")):
            d.cli("keys", "import", owner, str(identities[name].recipient()))
        for owner in ("CEO@b.test", "Boss@B.TEST", "JÖRG@EXÄMPLE.test", "@Secret.TEST"):
            d.cli("policy", "set", owner, "require")
        d.start()
        try:
            yield {"d": d, "wire": wire, "final": final, "ids": identities}
        finally:
            d.stop()
            assert "Traceback" not in d.log_text(), d.log_text()


@pytest.fixture(autouse=True)
def clean(world):
    world["wire"].messages.clear()
    world["final"].messages.clear()
    yield


def opened(data: bytes, identity) -> bytes:
    key, payload = decoded_parts(data)
    return age.decrypt(key + payload, [identity])


def assert_sealed(data: bytes, *plaintexts: bytes) -> None:
    assert bundle.is_sealed(data)
    bundle.split(data)
    for text in (SECRET, b"quarterly", *plaintexts):
        assert text not in data


# --- item 9: any spelling of an address ------------------------------------------------------

@pytest.mark.parametrize("rcpt, name", [("ceo@b.test", "ceo"), ("CEO@B.TEST", "ceo"), ("Ceo@B.Test", "ceo"),
                                        ("jörg@xn--exmple-cua.test", "joerg"), ("Jörg@exämple.test", "joerg"),
                                        ("ceo+board@b.test", "ceo")])
def test_a_key_and_require_under_one_spelling_hold_for_every_spelling(world, rcpt, name):
    options = ("SMTPUTF8",) if not rcpt.isascii() else ()
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", [rcpt], message(rcpt), mail_options=options)
    assert t.rcpts[0][0] == 250 and t.data[0] == 250, t
    [copy] = world["wire"].wait(1)
    assert copy.rcpts == [rcpt]  # relayed as the client spelled it
    assert_sealed(copy.data)
    assert opened(copy.data, world["ids"][name]) == message(rcpt)


@pytest.mark.parametrize("rcpt", ["boss@b.test", "BOSS@b.test", "boss+x@B.test", "anyone@secret.test",
                                  "Anyone@SECRET.test"])
def test_require_without_a_key_refuses_every_spelling(world, rcpt):
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", [rcpt], message(rcpt))
    assert t.rcpts[0][0] == 550 and t.rcpts[0][1].startswith(b"5.7.1"), t
    assert t.data is None and world["wire"].messages == []


def test_to_and_cc_spelled_differently_from_the_envelope_share_one_copy(world):
    msg = message("BOB@b.test", head=b"Cc: Carol <CAROL@B.TEST>\r\n")
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["bob@b.test", "Carol@b.test"], msg)
    assert t.data[0] == 250
    [copy] = world["wire"].wait(1)
    assert sorted(copy.rcpts) == ["Carol@b.test", "bob@b.test"]
    assert opened(copy.data, world["ids"]["carol"]) == msg
