"""The sealing side's promises, tried as an attacker through the real listeners
(issue 8 items 9-11, issue 9 item 7): any spelling of an address, mail that
only claims to be encrypted, Bcc lists, and hostile envelope addresses."""

from __future__ import annotations

import pytest

from mailseal import age, bundle

from . import encrypted_samples as samples
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


# --- item 11: Bcc ---------------------------------------------------------------------------------

BCC_HEAD = (b"From: alice@a.test\r\nTo: Bob <bob@b.test>\r\nCc: carol@b.test\r\n",
            b"Bcc: ceo@b.test,\r\n\tthe-board@b.test\r\n",
            b"Subject: quarterly numbers\r\n",
            b"resent-BCC : auditor@b.test\r\n",
            b"X-Note: a\rBcc: hidden@b.test\r\n  hidden2@b.test\r\n",  # a Bcc behind a bare CR
            b"Message-ID: <m2@a.test>\r\n\r\n" + SECRET + b"\r\nBcc: this line is body\r\n")


def test_bcc_fields_never_travel_in_a_sealed_copy(world):
    msg = b"".join(BCC_HEAD)
    without_bcc = BCC_HEAD[0] + BCC_HEAD[2] + BCC_HEAD[5]  # byte for byte, but for the Bcc fields
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["bob@b.test", "carol@b.test", "ceo@b.test"], msg)
    assert t.data[0] == 250
    copies = {tuple(sorted(c.rcpts)): c.data for c in world["wire"].wait(2)}
    assert set(copies) == {("bob@b.test", "carol@b.test"), ("ceo@b.test",)}
    shared = opened(copies[("bob@b.test", "carol@b.test")], world["ids"]["bob"])
    own = opened(copies[("ceo@b.test",)], world["ids"]["ceo"])
    for plaintext in (shared, own):  # the Bcc copy holds no Bcc field either (not even its own)
        assert plaintext == without_bcc
    for data in copies.values():
        for hidden in (b"ceo@", b"the-board", b"auditor", b"hidden"):
            assert hidden not in data


# --- item 10: mail that says it is encrypted ---------------------------------------------------

@pytest.fixture(scope="module")
def certs():
    return samples.Certificates()


@pytest.mark.parametrize("name", ["multipart-encrypted-label", "multipart-encrypted-pgp-protocol",
                                  "pgp-armored-literal", "pgp-armor-of-text", "pkcs7-mime-no-smime-type",
                                  "smime-signed-data", "smime-signed-data-labelled-enveloped",
                                  "subject-says-encrypted", "duplicated-content-type",
                                  "duplicated-content-type-on-pgp"])
def test_clear_mail_claiming_to_be_encrypted_is_sealed_for_require(world, certs, name):
    msg = samples.clear_dressed_up(certs)[name]
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["ceo@b.test"], msg)
    assert t.data[0] == 250, t
    [copy] = world["wire"].wait(1)
    assert_sealed(copy.data, samples.SUBJECT)
    assert opened(copy.data, world["ids"]["ceo"]) == msg


def test_really_encrypted_mail_is_sealed_again_when_a_key_is_known(world, certs, tmp_path):
    for msg in (samples.pgp_mime(), samples.smime_enveloped(certs), samples.smime_auth_enveloped(certs, tmp_path)):
        world["wire"].messages.clear()
        t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["ceo@b.test"], msg)
        assert t.data[0] == 250
        [copy] = world["wire"].wait(1)
        assert_sealed(copy.data, samples.SUBJECT)
        assert opened(copy.data, world["ids"]["ceo"]) == msg


def test_encrypted_mail_passes_unchanged_only_where_clear_is_allowed(world, certs):
    msg = samples.smime_enveloped(certs)
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["nokey@c.test", "ceo@b.test"], msg)
    assert t.data[0] == 250
    copies = {tuple(c.rcpts): c.data for c in world["wire"].wait(2)}
    assert copies[("nokey@c.test",)] == msg  # opportunistic, no key: as it came
    assert_sealed(copies[("ceo@b.test",)], samples.SUBJECT)
    assert "decision=clear-smime+pq" in world["d"].log_text()


# --- issue 9 item 7: envelope address syntax at the edge, both listeners ----------------------

class RawSession:
    """A raw SMTP session: exact bytes out, whole (multi-line) replies back."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rwb")
        assert self.reply()[0] == 220
        assert self.command(b"EHLO client.test")[0] == 250

    def reply(self) -> tuple[int, bytes]:
        lines = [self.file.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(self.file.readline())
        return int(lines[-1][:3]), lines[-1][4:].strip()

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.file.write(line + b"\r\n")
        self.file.flush()
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


HOSTILE_MAIL = [
    (b"MAIL FROM: junk junk", 501, b"5.1.7"),
    (b'MAIL FROM:<"a\rRCPT TO:<x@evil.test>"@a.test>', 501, b"5.1.7"),  # bare CR inside a quoted local part
    (b'MAIL FROM:<"a\x00b"@a.test>', 501, b"5.1.7"),
    (b"MAIL FROM:<a\x01b@a.test>", 501, b"5.1.7"),
    (b'MAIL FROM:<"a\\\x07"@a.test>', 501, b"5.1.7"),  # a quoted-pair may not quote a control either
    ("MAIL FROM:<jörg@exämple.test>".encode(), 553, b"5.6.7"),  # 8-bit without SMTPUTF8
    (b"MAIL FROM:<a\xff@a.test> SMTPUTF8", 501, b"5.1.7"),  # not even UTF-8
]
HOSTILE_RCPT = [
    (b"RCPT TO:<bob\x01@b.test>", 501, b"5.1.3"),
    (b'RCPT TO:<"x\ry"@b.test>', 501, b"5.1.3"),
    ("RCPT TO:<jörg@exämple.test>".encode(), 553, b"5.6.7"),
]


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
def test_hostile_envelope_addresses_are_refused_never_relayed_nor_logged(world, listener):
    port = getattr(world["d"], f"{listener}_port")
    sink = world["wire"] if listener == "outbound" else world["final"]
    session = RawSession(port)
    try:
        for line, code, enhanced in HOSTILE_MAIL:
            reply = session.command(line)
            assert reply[0] == code and reply[1].startswith(enhanced), (line, reply)
        # the session stays in step: a good MAIL, then hostile recipients
        assert session.command(b"MAIL FROM:<alice@a.test>")[0] == 250
        for line, code, enhanced in HOSTILE_RCPT:
            reply = session.command(line)
            assert reply[0] == code and reply[1].startswith(enhanced), (line, reply)
        assert session.command(b"RCPT TO:<internal@c.test>")[0] == 250
        assert session.command(b"DATA")[0] == 354
        session.file.write(b"From: alice@a.test\r\nTo: internal@c.test\r\n\r\nhello\r\n.\r\n")
        session.file.flush()
        assert session.reply()[0] == 250
        # with SMTPUTF8, UTF-8 addresses are welcome (the recipient gets a sealed copy)
        assert session.command("MAIL FROM:<jörg@exämple.test> SMTPUTF8".encode())[0] == 250
        assert session.command("RCPT TO:<jörg@exämple.test>".encode())[0] in (250, 550)
        assert session.command(b"RSET")[0] == 250
    finally:
        session.close()
    [got] = sink.wait(1)
    assert (got.mail_from, got.rcpts) == ("alice@a.test", ["internal@c.test"])
    log = world["d"].log_text()
    for fragment in ("junk", "evil.test", "exämple", "\x00", "\x01", "\x07", "x\ry"):
        assert fragment not in log, fragment
