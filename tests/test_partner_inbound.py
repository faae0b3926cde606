"""Inbound: S/MIME and PGP/MIME mail for local users whose keys we hold, opened
through the real listener (made by openssl and gpg as Outlook and Thunderbird would)."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from mailseal import openpgp, protect, smime

from .conftest import run_cli
from .harness import Daemon, Sink, smtp_transaction
from .partner_keys import MESSAGES, gnupg_home, gpg_keys, rsa_identity, write_pem
from .test_openpgp import THUNDERBIRD_INNER, _thunderbird

PLAIN = MESSAGES["plain"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("partner-inbound")
    bob, carol = rsa_identity("bob@b.test"), rsa_identity("carol@b.test")
    dora, alice = gpg_keys(root / "pgp", "Dora <dora@b.test>", "Alice <alice@a.test>")
    p12 = root / "bob.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(b"bob", bob.private_key, bob.certificate, None,
                                                          BestAvailableEncryption(b"pw")))
    (root / "dora.key").write_bytes(bytes(dora))
    (root / "alice.asc").write_text(str(alice.extract_certificate()))
    with Sink() as final:
        d = Daemon(root / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        done = run_cli("-c", str(d.config), "keys", "import-secret", "bob@b.test", str(p12), "--password-env", "PW",
                       env={"PW": "pw"})
        assert done.returncode == 0, done.stderr
        d.cli("keys", "import-secret", "dora@b.test", str(root / "dora.key"))
        d.cli("keys", "import", "alice@a.test", str(root / "alice.asc"))
        d.start()
        try:
            yield {"d": d, "final": final, "bob": bob, "carol": carol, "dora": dora, "alice": alice, "root": root}
        finally:
            d.stop()
            assert "Traceback" not in d.log_text(), d.log_text()


@pytest.fixture(autouse=True)
def clean(world):
    world["final"].messages.clear()
    yield


def send(world, rcpts, data):
    return smtp_transaction(world["d"].inbound_port, "alice@a.test", rcpts, data)


def _openssl_encrypted(world, identity) -> bytes:
    cert, _ = write_pem(identity, world["root"], "recipient")
    done = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-binary", "-from", "alice@a.test", "-to",
                           "bob@b.test", "-subject", "[...]", str(cert)], input=PLAIN, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_smime_from_openssl_opens_for_its_recipient(world):
    t = send(world, ["bob@b.test"], _openssl_encrypted(world, world["bob"]))
    assert t.data[0] == 250, t
    [got] = world["final"].wait(1)
    head, _, rest = bytes(got.data).partition(b"\r\n")
    listed = world["d"].cli("keys", "show", "bob@b.test")
    key = head.decode().rpartition("key=")[2]
    assert head == f"Mailseal-Status: opened-smime; unsigned; key={key}".encode() and key in listed
    assert rest == PLAIN


def test_our_own_smime_copy_opens_byte_exact(world):
    t = send(world, ["bob@b.test"], smime.seal(PLAIN, [world["bob"].certificate]))
    assert t.data[0] == 250, t
    [got] = world["final"].wait(1)
    assert bytes(got.data).partition(b"\r\n")[2] == PLAIN


def test_pgp_mime_from_gpg_opens_with_signature_status(world):
    encrypt = ("gpg", "--batch", "--quiet", "--trust-model", "always", "--armor", "--encrypt", "-r", "dora@b.test")
    with gnupg_home(world["root"] / "g1", bytes(world["dora"].extract_certificate()), bytes(world["alice"])) as env:
        signed = subprocess.run([*encrypt, "-z", "0", "--sign", "-u", "alice@a.test"], input=THUNDERBIRD_INNER,
                                env=env, capture_output=True, timeout=60).stdout
        plain = subprocess.run(list(encrypt), input=THUNDERBIRD_INNER, env=env, capture_output=True, timeout=60).stdout
    fingerprint = world["alice"].extract_certificate().fingerprint
    assert send(world, ["dora@b.test"], _thunderbird(signed)).data[0] == 250
    assert send(world, ["dora@b.test"], _thunderbird(plain)).data[0] == 250
    first, second = world["final"].wait(2)
    for got, status in ((first, f"signed-by={fingerprint}"), (second, "unsigned")):
        head, _, rest = bytes(got.data).partition(b"\r\n")
        assert head.startswith(f"Mailseal-Status: opened-openpgp; {status}; key=".encode()), head
        assert rest == THUNDERBIRD_INNER


def test_our_own_pgp_copy_opens_byte_exact(world):
    sealed = openpgp.seal(PLAIN, [world["dora"].extract_certificate()])
    assert send(world, ["dora@b.test"], sealed).data[0] == 250
    [got] = world["final"].wait(1)
    assert bytes(got.data).partition(b"\r\n")[2] == PLAIN
    assert protect.HP_PARAM not in bytes(got.data)


def test_tampered_and_wrong_key_are_refused(world):
    sealed = smime.seal(PLAIN, [world["bob"].certificate])
    der = bytearray(smime.enveloped_data(sealed))
    der[-1] ^= 1
    from mailseal import mime

    head_end = mime.split_head(sealed)[1]
    tampered = sealed[:head_end] + b"".join(mime.base64_lines(bytes(der), b"\r\n"))
    t = send(world, ["bob@b.test"], tampered)
    assert t.data[0] == 550 and t.data[1].startswith(b"5.7.5"), t
    t = send(world, ["bob@b.test"], _openssl_encrypted(world, world["carol"]))
    assert t.data[0] == 550 and b"No local key" in t.data[1], t
    t = send(world, ["bob@b.test"], sealed[: len(sealed) // 2])
    assert t.data[0] == 550 and t.data[1].startswith(b"5.6.0"), t
    assert world["final"].messages == []


def test_recipients_without_keys_get_the_mail_as_it_came(world):
    sealed = smime.seal(PLAIN, [world["bob"].certificate])
    assert send(world, ["zed@b.test"], sealed).data[0] == 250
    [got] = world["final"].wait(1)
    assert bytes(got.data) == sealed and got.rcpts == ["zed@b.test"]


def test_signed_only_smime_is_not_taken_for_encrypted(world):
    cert, key = write_pem(world["carol"], world["root"], "signer")
    done = subprocess.run(["openssl", "smime", "-sign", "-nodetach", "-binary", "-signer", str(cert), "-inkey",
                           str(key)], input=PLAIN, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"signed-data" in done.stdout
    # As a mail client sends it: the signed entity with the message's own header fields.
    signed = b"From: carol@c.test\r\nTo: bob@b.test\r\n" + done.stdout.replace(b"\n", b"\r\n")
    assert send(world, ["bob@b.test"], signed).data[0] == 250
    [got] = world["final"].wait(1)
    assert bytes(got.data) == signed  # delivered as it came: nothing to open


def test_refusals_follow_on_failure_quarantine(tmp_path, world):
    """A tampered S/MIME message for a local key is quarantined, not delivered, under on_failure = quarantine."""
    p12 = world["root"] / "bob.p12"
    with Sink() as final:
        q = Daemon(tmp_path / "q", inbound={"next_hop": f"127.0.0.1:{final.port}", "on_failure": "quarantine"})
        done = run_cli("-c", str(q.config), "keys", "import-secret", "bob@b.test", str(p12), "--password-env", "PW",
                       env={"PW": "pw"})
        assert done.returncode == 0, done.stderr
        q.start()
        try:
            sealed = smime.seal(PLAIN, [world["bob"].certificate])
            t = smtp_transaction(q.inbound_port, "alice@a.test", ["bob@b.test"], sealed[: len(sealed) // 2])
            assert t.data[0] == 250 and b"quarantined as " in t.data[1] and b"(malformed)" in t.data[1], t
            listed = q.cli("quarantine", "list")
            assert "malformed" in listed and "bob@b.test" in listed
            assert final.messages == []
        finally:
            q.stop()
