"""Outbound to partners without mailseal, through the real listener: the format
chosen per recipient, separate copies per format, Bcc copies, require never in
clear, expired certificates refused at RCPT."""

from __future__ import annotations

import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization

from mailseal import age, bundle, openpgp, smime

from .harness import Daemon, Sink, smtp_transaction
from .partner_keys import gpg_keys, pem, rsa_identity
from .test_outbound_promises import opened

SECRET = b"the merger closes on friday"
MESSAGE = (b"From: alice@a.test\r\nTo: ceo@b.test, bob@c.test, dora@d.test\r\nCc: eve@d.test\r\n"
           b"Bcc: frank@e.test\r\nSubject: quarterly numbers\r\nMessage-ID: <p1@a.test>\r\n\r\n" + SECRET + b"\r\n")
WITHOUT_BCC = MESSAGE.replace(b"Bcc: frank@e.test\r\n", b"")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("partners")
    keys = {"ceo": age.generate()}
    for name in ("bob", "eve", "frank", "ceo-x509"):
        keys[name] = rsa_identity(f"{name}@x.test")
    pgp = dict(zip(("dora", "eve-pgp", "frank-pgp"),
                   gpg_keys(root / "pgp", "Dora <dora@d.test>", "Eve <eve@d.test>", "Frank <frank@e.test>")))
    keys.update(pgp)
    files = {}
    for name, key in keys.items():
        path = root / f"{name}.cert"
        if name == "ceo":
            continue
        if name in pgp:
            path.write_bytes(bytes(key.extract_certificate()))
        else:
            path.write_bytes(pem(key))
        files[name] = str(path)
    with Sink() as wire:
        d = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"})
        with open(d.config, "a") as config:
            config.write('\n[outbound.formats_by_domain]\n"e.test" = ["smime", "openpgp", "age"]\n')
        d.cli("keys", "import", "ceo@b.test", str(keys["ceo"].recipient()))
        d.cli("keys", "import", "ceo@b.test", files["ceo-x509"])  # age comes first: never used
        d.cli("keys", "import", "bob@c.test", files["bob"])
        d.cli("keys", "import", "dora@d.test", files["dora"])
        d.cli("keys", "import", "eve@d.test", files["eve-pgp"])
        d.cli("keys", "import", "eve@d.test", files["eve"])  # OpenPGP comes before S/MIME by default
        d.cli("keys", "import", "frank@e.test", files["frank-pgp"])
        d.cli("keys", "import", "frank@e.test", files["frank"])  # e.test prefers S/MIME
        # Gina's certificate is valid for a few seconds more: imported while
        # valid, expired by the time mail comes (time passing; the keystore's
        # rows cannot be edited behind its back, its digest would tell).
        gina = rsa_identity("gina@x.test", days=4 / 86400)
        (root / "gina.cert").write_bytes(pem(gina))
        d.cli("keys", "import", "gina@c.test", str(root / "gina.cert"))
        expiry = gina.certificate.not_valid_after_utc.timestamp()
        while time.time() <= expiry + 1:
            time.sleep(0.2)
        for owner in ("@b.test", "@c.test", "@d.test", "@e.test"):
            d.cli("policy", "set", owner, "require")
        d.start()
        try:
            yield {"d": d, "wire": wire, "keys": keys, "root": root}
        finally:
            d.stop()
            assert "Traceback" not in d.log_text(), d.log_text()


def test_each_recipient_gets_its_format_in_separate_copies(world):
    rcpts = ["ceo@b.test", "bob@c.test", "dora@d.test", "eve@d.test", "frank@e.test"]
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", rcpts, MESSAGE)
    assert all(code == 250 for code, _ in t.rcpts) and t.data[0] == 250, t
    copies = {tuple(sorted(c.rcpts)): c.data for c in world["wire"].wait(4)}
    assert set(copies) == {("ceo@b.test",), ("bob@c.test",), ("dora@d.test", "eve@d.test"), ("frank@e.test",)}
    for data in copies.values():  # require: nothing in clear, the Subject hidden
        assert SECRET not in data and b"quarterly" not in data and b"Subject: [...]\r\n" in data
    keys = world["keys"]
    assert bundle.is_sealed(copies[("ceo@b.test",)])
    assert opened(copies[("ceo@b.test",)], keys["ceo"]) == WITHOUT_BCC
    assert smime.open_message(copies[("bob@c.test",)], [keys["bob"]]).message == WITHOUT_BCC
    shared = copies[("dora@d.test", "eve@d.test")]
    for key in (keys["dora"], keys["eve-pgp"]):
        assert openpgp.open_message(shared, [key]).message == WITHOUT_BCC
    # The Bcc recipient's copy is its own, in its domain's preferred format, without the Bcc field.
    frank = copies[("frank@e.test",)]
    assert smime.open_message(frank, [keys["frank"]]).message == WITHOUT_BCC
    with pytest.raises(Exception):
        openpgp.open_message(frank, [keys["frank-pgp"]])
    # And the real tool opens it.
    cert, key = (world["root"] / "frank.crt", world["root"] / "frank.key")
    cert.write_bytes(pem(keys["frank"]))
    key.write_bytes(keys["frank"].private_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    done = subprocess.run(["openssl", "cms", "-decrypt", "-binary", "-recip", str(cert), "-inkey", str(key)],
                          input=frank, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"hp=\"cipher\"" in done.stdout and SECRET in done.stdout
    log = world["d"].log_text()
    assert "smime" in log and "openpgp" in log


def test_require_with_only_an_expired_certificate_is_refused_at_rcpt(world):
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["gina@c.test"], MESSAGE)
    assert t.rcpts[0][0] == 550 and t.rcpts[0][1].startswith(b"5.7.1"), t
    assert b"certificate has expired" in t.rcpts[0][1]
    t = smtp_transaction(world["d"].outbound_port, "alice@a.test", ["nobody@c.test"], MESSAGE)
    assert t.rcpts[0][0] == 550 and b"no usable key" in t.rcpts[0][1]
    assert world["wire"].messages == [] or all(SECRET not in m.data for m in world["wire"].messages)


def test_explain_names_the_format_and_the_certificate(world):
    said = world["d"].cli("explain", "frank@e.test")
    assert "outbound:       seal (S/MIME)" in said and "x509" in said
    said = world["d"].cli("explain", "eve@d.test")
    assert "outbound:       seal (PGP/MIME)" in said
    said = world["d"].cli("explain", "ceo@b.test")
    assert "seal (post-quantum)" in said and "passed over:" in said  # its S/MIME certificate
