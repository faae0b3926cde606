"""S/MIME and OpenPGP keys in the keystore: import checks, lookups, sealing at rest, CLI."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from mailseal import openpgp, partner_keys, smime
from mailseal.addresses import parse_address
from mailseal.keystore import MasterKeySource, SQLiteKeyStore
from tests.partner_keys import MESSAGES, ec_certificate, gpg_keys, issued, pem, rsa_identity
from tests.test_cli_keys import fails, ms, ok


@pytest.fixture(scope="module")
def ca() -> smime.Identity:
    return rsa_identity("ca@partner.test")


@pytest.fixture(scope="module")
def bob() -> smime.Identity:
    return rsa_identity("bob@b.test")


@pytest.fixture(scope="module")
def pgp(tmp_path_factory):
    return gpg_keys(tmp_path_factory.mktemp("pgp"), "Bob <bob@b.test>", "Dora <dora@a.test>")


@pytest.fixture()
def store(tmp_path):
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", MasterKeySource(file=tmp_path / "master.key"), actor="test") as s:
        yield s


def test_x509_checks(ca, bob):
    der = bob.certificate.public_bytes(serialization.Encoding.DER)
    key = partner_keys.certificate(der)
    assert key.kind == "x509" and key.expires == int(bob.certificate.not_valid_after_utc.timestamp())
    assert partner_keys.certificate(pem(bob)).public == pem(bob).decode()
    leaf = issued("carol@partner.test", ca)
    assert partner_keys.certificate(pem(leaf, ca), [ca.certificate]).public == pem(leaf).decode()
    assert partner_keys.certificate(pem(leaf), [ca.certificate]).kind == "x509"
    with pytest.raises(partner_keys.PartnerKeyError, match="chain is broken"):
        partner_keys.certificate(pem(leaf, bob))
    with pytest.raises(partner_keys.PartnerKeyError, match="trust anchors"):
        partner_keys.certificate(pem(leaf), [bob.certificate])
    with pytest.raises(partner_keys.PartnerKeyError, match="expired or not yet valid"):
        partner_keys.certificate(pem(bob), now=bob.certificate.not_valid_after_utc.timestamp() + 10)
    with pytest.raises(partner_keys.PartnerKeyError, match="RFC 5753"):
        partner_keys.certificate(ec_certificate("ec@b.test").public_bytes(serialization.Encoding.PEM))
    server_only = issued("web@partner.test", ca, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(partner_keys.PartnerKeyError, match="e-mail protection"):
        partner_keys.certificate(pem(server_only))
    mail = issued("mail@partner.test", ca, usages=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    assert partner_keys.certificate(pem(mail)).kind == "x509"


def test_remote_certificates_are_found_only_while_usable(store, bob, pgp):
    address = parse_address("bob@b.test")
    assert store.partner_certificates_for(address) == {}
    x509_key = partner_keys.certificate(pem(bob))
    pgp_key = partner_keys.certificate(bytes(pgp[0].extract_certificate()))
    store.import_partner_key("bob@b.test", x509_key.kind, x509_key.public, expires=x509_key.expires)
    record = store.import_partner_key("@b.test", pgp_key.kind, pgp_key.public, expires=pgp_key.expires)
    assert store.partner_certificates_for(address) == {"x509": [x509_key.public]}
    assert store.partner_certificates_for(parse_address("eve@b.test")) == {"openpgp": [pgp_key.public]}
    # The age path does not see them.
    assert store.recipients_for(address) == [] and store.identities_for(address) == []
    store.revoke(record.fingerprint)
    assert store.partner_certificates_for(parse_address("eve@b.test")) == {}
    assert not store.partner_certificate_expired(address)
    actions = [(e.action, e.subject) for e in store.audit_entries()]
    assert ("key.import", "bob@b.test") in actions and ("key.revoke", "@b.test") in actions


def test_expired_certificate_is_told_apart(tmp_path, bob):
    now = [time.time()]
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", MasterKeySource(file=tmp_path / "master.key"),
                        clock=lambda: now[0]) as store:
        key = partner_keys.certificate(pem(bob))
        store.import_partner_key("bob@b.test", key.kind, key.public, expires=key.expires)
        address = parse_address("bob@b.test")
        assert store.partner_certificates_for(address) and not store.partner_certificate_expired(address)
        now[0] = key.expires + 1
        assert store.partner_certificates_for(address) == {}
        assert store.partner_certificate_expired(address)


def test_local_secrets_are_sealed_at_rest_and_open_mail(tmp_path, store, bob, pgp):
    p12 = pkcs12.serialize_key_and_certificates(b"bob", bob.private_key, bob.certificate, None,
                                                BestAvailableEncryption(b"pw"))
    smime_key = partner_keys.secret_key(p12, b"pw")
    pgp_key = partner_keys.secret_key(bytes(pgp[0]))
    store.import_partner_key("bob@b.test", smime_key.kind, smime_key.public, secret=smime_key.secret,
                             expires=smime_key.expires)
    store.import_partner_key("bob@b.test", pgp_key.kind, pgp_key.public, secret=pgp_key.secret)
    secrets = store.partner_secrets_for(parse_address("bob@b.test"))
    assert sorted(kind for kind, _, _ in secrets) == ["openpgp", "x509"]
    by_kind = {kind: (public, secret) for kind, public, secret in secrets}
    identity = partner_keys.load_smime_identity(*by_kind["x509"])
    sealed = smime.seal(MESSAGES["plain"], [bob.certificate])
    assert smime.open_message(sealed, [identity]).message == MESSAGES["plain"]
    tsk = partner_keys.load_openpgp_key(by_kind["openpgp"][1])
    sealed = openpgp.seal(MESSAGES["plain"], [pgp[0].extract_certificate()])
    assert openpgp.open_message(sealed, [tsk]).message == MESSAGES["plain"]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("ks.sqlite3"))
    private_pem = smime_key.secret.split(b"\n")[1]
    assert private_pem not in raw and pgp_key.secret[:200] not in raw


def test_cli_import_list_show_export_revoke(tmp_path, bob, pgp):

    config = tmp_path / "mailseal.toml"
    config.write_text('[keystore]\npath = "state/ks.sqlite3"\nmaster_key_file = "state/master.key"\n')
    der = tmp_path / "bob.der"
    der.write_bytes(bob.certificate.public_bytes(serialization.Encoding.DER))
    out = ok(ms(config, "keys", "import", "bob@b.test", str(der)))
    assert "\nimported x509 certificate " in out  # after the line saying the keystore was created
    armored = tmp_path / "dora.asc"
    armored.write_text(str(pgp[1].extract_certificate()))
    assert "imported openpgp certificate" in ok(ms(config, "keys", "import", "dora@a.test", str(armored)))
    p12 = tmp_path / "bob.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(b"bob", bob.private_key, bob.certificate, None,
                                                          BestAvailableEncryption(b"s3cret")))
    result = ms(config, "keys", "import-secret", "me@local.test", str(p12), "--password-env", "P12_PASSWORD")
    fails(result, "$P12_PASSWORD is not set")
    from tests.conftest import run_cli

    done = run_cli("-c", str(config), "keys", "import-secret", "me@local.test", str(p12), "--password-env",
                   "P12_PASSWORD", env={"P12_PASSWORD": "s3cret"})
    assert "imported local x509 key" in ok(done)
    listed = {(k["owner"], k["scope"], k["kind"]): k for k in json.loads(ok(ms(config, "keys", "list", "--json")))}
    assert set(listed) == {("bob@b.test", "remote", "x509"), ("dora@a.test", "remote", "openpgp"),
                           ("me@local.test", "local", "x509")}
    assert listed[("bob@b.test", "remote", "x509")]["expires"] == int(bob.certificate.not_valid_after_utc.timestamp())
    exported = ok(ms(config, "keys", "export", "me@local.test"))
    assert exported == pem(bob).decode() and "PRIVATE" not in exported
    assert "BEGIN CERTIFICATE" in ok(ms(config, "keys", "show", "bob@b.test"))
    assert "revoked remote key" in ok(ms(config, "keys", "revoke", "dora@a.test"))
    # Refusals are one line.
    ec = tmp_path / "ec.pem"
    ec.write_bytes(ec_certificate("ec@b.test").public_bytes(serialization.Encoding.PEM))
    fails(ms(config, "keys", "import", "ec@b.test", str(ec)), "RFC 5753")
    secret = tmp_path / "bob.key.asc"
    secret.write_text(str(pgp[0]))
    fails(ms(config, "keys", "import", "bob@b.test", str(secret)), "import-secret")
    fails(ms(config, "keys", "import", "bob@b.test", str(der), "--ca", str(der), "--expires", "30d"),
          "already has")
    fails(ms(config, "keys", "import-secret", "me@local.test", str(p12)), "wrong password")


def test_outbound_decision_looks_no_further_for_age_recipients(tmp_path, bob):
    """The age path's cost is unchanged: a recipient with an age key costs no certificate lookup."""
    from types import SimpleNamespace

    from mailseal import age, policy
    from mailseal.config import OutboundConfig
    from mailseal.gateway.outbound import OutboundHandler

    class Counting:
        def __init__(self, store):
            self.store, self.calls = store, []

        def __getattr__(self, name):
            self.calls.append(name)
            return getattr(self.store, name)

    with SQLiteKeyStore(tmp_path / "ks.sqlite3", MasterKeySource(file=tmp_path / "master.key")) as store:
        store.import_recipient("ceo@b.test", age.generate().recipient())
        key = partner_keys.certificate(pem(bob))
        store.import_partner_key("ceo@b.test", key.kind, key.public, expires=key.expires)
        store.import_partner_key("bob@b.test", key.kind, key.public, expires=key.expires)
        counting = Counting(store)
        outbound = OutboundConfig(None, "smtp", None, "opportunistic")  # type: ignore[arg-type]
        handler = OutboundHandler(SimpleNamespace(keystore=counting, config=SimpleNamespace(outbound=outbound)))
        assert handler.decide(parse_address("ceo@b.test")).format == policy.AGE
        assert counting.calls == ["policy_for", "recipients_for"]
        counting.calls.clear()
        decision = handler.decide(parse_address("bob@b.test"))
        assert decision.format == policy.SMIME and decision.certificates == (key.public,)
        assert counting.calls == ["policy_for", "recipients_for", "partner_certificates_for"]
