"""One canonical owner per address, in every keystore path and in old keystores.

Written as the attacker of issue 8 item 9: a key and `require` stored under
one spelling must hold for every other spelling of the same address.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from mailseal import age
from mailseal.addresses import parse_address
from mailseal.keystore import MasterKeyError, MasterKeySource, NotFound, SQLiteKeyStore, fingerprint, masterkey
from mailseal.keystore import audit as audit_mod
from mailseal.keystore.sqlite import MIGRATIONS, _identity_context, _statements

CEO = ["CEO@B.TEST", "ceo@b.test", "Ceo@B.Test"]
JOERG = ["jörg@exämple.test", "JÖRG@EXÄMPLE.TEST", "jörg@xn--exmple-cua.test", "Jörg@XN--EXMPLE-CUA.test"]
NOW = 1_800_000_000


@pytest.fixture()
def paths(tmp_path):
    return tmp_path / "ks.sqlite3", tmp_path / "master.key"


@pytest.fixture()
def store(paths):
    with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1]), clock=lambda: NOW, actor="test") as s:
        yield s


@pytest.mark.parametrize("spellings", [CEO, JOERG], ids=["case", "idn"])
def test_every_lookup_path_agrees_on_every_spelling(store, spellings):
    stored, *others = spellings
    remote = age.generate().recipient()
    store.import_recipient(stored, remote)
    store.set_policy(stored, "require")
    local = store.generate(stored)
    owner = parse_address(stored).owner
    assert {r.owner for r in store.list_keys()} == {owner}
    assert [p[0] for p in store.list_policies()] == [owner]
    for spelling in spellings:
        address = parse_address(spelling)
        assert store.recipients_for(address) == [remote], spelling
        assert store.policy_for(address) == (owner, "require"), spelling
        assert [str(i.recipient()) for i in store.identities_for(address)] == [local.recipient], spelling
        assert [r.fingerprint for r in store.export(spelling)] == [local.fingerprint], spelling
        assert len(store.find(spelling)) == 2, spelling
    # administration by another spelling acts on the same rows
    new, retired = store.rotate(others[0])
    assert [r.fingerprint for r in retired] == [local.fingerprint]
    store.set_policy(others[1], "plain")
    assert store.list_policies() == [(owner, "plain", NOW)]
    store.unset_policy(others[-1])
    assert store.policy_for(parse_address(stored)) is None
    assert {r.fingerprint for r in store.revoke(others[0])} == {fingerprint(str(remote)), new.fingerprint,
                                                                local.fingerprint}
    assert store.recipients_for(parse_address(others[1])) == []
    assert len(store.delete(others[-1])) == 3
    with pytest.raises(NotFound):
        store.export(stored)


def test_a_tag_is_its_own_owner_and_falls_back_to_its_mailbox(store):
    base, tagged = age.generate().recipient(), age.generate().recipient()
    store.import_recipient("Bob@B.test", base)
    assert store.recipients_for(parse_address("BOB+News@b.TEST")) == [base]
    store.import_recipient("bob+NEWS@b.test", tagged)
    assert store.recipients_for(parse_address("Bob+news@B.test")) == [tagged]
    assert store.recipients_for(parse_address("bob+other@b.test")) == [base]
    store.set_policy("BOB@b.test", "require")
    assert store.policy_for(parse_address("bob+News@B.TEST")) == ("bob@b.test", "require")


def test_domain_owner_is_canonical(store):
    r = age.generate().recipient()
    store.import_recipient("@EXÄMPLE.test", r)
    assert store.list_keys()[0].owner == "@xn--exmple-cua.test"
    assert store.recipients_for(parse_address("Anyone@xn--EXMPLE-cua.test")) == [r]


# --- a keystore written by the code before canonical owners -----------------------------------

def old_keystore(db_path, key_path) -> dict:
    """A keystore as the old code left it: schema 1, owners with their case kept."""
    key = masterkey.load(MasterKeySource(file=key_path), None, creating=True)
    master = masterkey.MasterKey(key)
    db = sqlite3.connect(db_path, isolation_level=None)
    for statement in _statements(MIGRATIONS[0]):
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    # the check value of a keystore whose integrity was not yet keyed (masterkey.py)
    db.execute("INSERT INTO meta VALUES ('master_key_check', ?)", (master.seal(b"", b"mailseal master key check v1"),))
    prev = audit_mod.GENESIS
    for seq, (action, subject) in enumerate([("keystore.create", str(db_path)), ("key.import", "CEO@b.test")], 1):
        digest = audit_mod.legacy_hash(prev, audit_mod.body(seq, NOW, "old", action, subject, {}))
        db.execute("INSERT INTO audit VALUES (?, ?, 'old', ?, ?, '{}', ?, ?)", (seq, NOW, action, subject, prev, digest))
        prev = digest
    pinned, spare, revoked_elsewhere = (age.generate().recipient() for _ in range(3))
    identity = age.generate()

    def key_row(scope, owner, recipient, secret=None, revoked=None, expires=None):
        db.execute("INSERT INTO keys (scope, owner, kind, recipient, fingerprint, secret, source, created, expires, "
                   "revoked, reason) VALUES (?, ?, 'mlkem768x25519', ?, ?, ?, 'imported', ?, ?, ?, ?)",
                   (scope, owner, str(recipient), fingerprint(str(recipient)), secret, NOW, expires, revoked,
                    "lost" if revoked else None))

    key_row("remote", "CEO@b.test", pinned, expires=NOW + 500)
    key_row("remote", "ceo@b.test", pinned, expires=NOW + 100)  # the same key under two spellings
    key_row("remote", "Ceo@B.test", revoked_elsewhere)
    key_row("remote", "ceo@b.test", revoked_elsewhere, revoked=NOW - 5)  # revoked under one of them
    key_row("remote", "Bob+Tag@b.test", spare)
    owner = "Jörg@xn--exmple-cua.test"
    key_row("local", owner, identity.recipient(),
            secret=master.seal(str(identity).encode(), _identity_context(owner, str(identity.recipient()))))
    for owner, policy in (("CEO@b.test", "require"), ("ceo@b.test", "plain"), ("Ceo@B.test", "opportunistic"),
                          ("Bob+Tag@b.test", "plain"), ("@b.test", "opportunistic")):
        db.execute("INSERT INTO policies VALUES (?, ?, ?)", (owner, policy, NOW))
    db.close()
    return {"pinned": pinned, "spare": spare, "revoked": revoked_elsewhere, "identity": identity}


def test_an_old_keystore_is_migrated_and_merged_the_strict_way(paths):
    made = old_keystore(*paths)
    with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1]), clock=lambda: NOW, actor="daemon") as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        # the attack of issue 8 item 9: `require` and the key hold for the lower-case spelling
        for spelling in CEO:
            assert s.policy_for(parse_address(spelling)) == ("ceo@b.test", "require")
            assert s.recipients_for(parse_address(spelling)) == [made["pinned"]]
        keys = {(r.owner, r.recipient): r for r in s.list_keys()}
        assert set(keys) == {("ceo@b.test", str(made["pinned"])), ("ceo@b.test", str(made["revoked"])),
                             ("bob+tag@b.test", str(made["spare"])),
                             ("jörg@xn--exmple-cua.test", str(made["identity"].recipient()))}
        # merged rows carry the stricter state: the earlier expiry, the revocation and its reason
        assert keys[("ceo@b.test", str(made["pinned"]))].expires == NOW + 100
        merged = keys[("ceo@b.test", str(made["revoked"]))]
        assert (merged.revoked, merged.reason) == (NOW - 5, "lost")
        assert s.policy_for(parse_address("BOB+tag@b.test")) == ("bob+tag@b.test", "plain")
        assert sorted(p[:2] for p in s.list_policies()) == [
            ("@b.test", "opportunistic"), ("bob+tag@b.test", "plain"), ("ceo@b.test", "require")]
        # the local identity was re-sealed under its canonical owner and still opens mail
        [identity] = s.identities_for(parse_address("jörg@exämple.test"))
        sealed = age.encrypt(b"for joerg", [made["identity"].recipient()])
        assert age.decrypt(sealed, [identity]) == b"for joerg"
        entries = s.audit_entries()
        s.verify()  # the chain, re-keyed under the master key by the upgrade, and every row
        moved = [(e.action, e.subject, e.detail.get("from")) for e in entries[2:]]
        assert ("key.merge", "ceo@b.test", "CEO@b.test") in moved
        assert ("key.canonicalise", "jörg@xn--exmple-cua.test", "Jörg@xn--exmple-cua.test") in moved
        [policy_entry] = [e for e in entries if e.action == "policy.canonicalise" and e.subject == "ceo@b.test"]
        assert policy_entry.detail == {"from": {"CEO@b.test": "require", "Ceo@B.test": "opportunistic",
                                                "ceo@b.test": "plain"}, "policy": "require"}
        assert all(e.actor == "daemon" for e in entries[2:])
    # a second opening changes nothing more
    with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1]), clock=lambda: NOW) as s:
        assert len(s.audit_entries()) == len(entries)


def test_migration_without_the_right_master_key_changes_nothing(paths, tmp_path):
    old_keystore(*paths)
    wrong = tmp_path / "wrong.key"
    masterkey.load(MasterKeySource(file=wrong), None, creating=True)
    with pytest.raises(MasterKeyError, match="wrong master key"):
        SQLiteKeyStore(paths[0], MasterKeySource(file=wrong), create=False)
    db = sqlite3.connect(paths[0])
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM keys WHERE owner = 'CEO@b.test'").fetchone()[0] == 1
    assert json.loads(db.execute("SELECT detail FROM audit ORDER BY seq DESC").fetchone()[0]) == {}
    db.close()
