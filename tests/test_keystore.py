"""The keystore API against a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from mailseal import age
from mailseal.addresses import parse_address
from mailseal.keystore import (
    Conflict,
    KeystoreError,
    MasterKeyError,
    MasterKeySource,
    NotFound,
    SQLiteKeyStore,
    StoreUnavailable,
    fingerprint,
    parse_cards,
    render_card,
)
from mailseal.keystore.audit import first_broken


class Clock:
    def __init__(self, now: float = 1_800_000_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def paths(tmp_path):
    return tmp_path / "ks.sqlite3", tmp_path / "master.key"


@pytest.fixture()
def clock():
    return Clock()


@pytest.fixture()
def store(paths, clock):
    db, key = paths
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock, actor="test") as s:
        yield s


def test_files_are_created_private(store, paths):
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_database_holds_no_identity_in_clear(store, paths):
    for owner in ("a@x.test", "b@x.test", "@y.test"):
        store.generate(owner)
        store.generate(owner, classic=True)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        path = paths[0].with_name(paths[0].name + suffix)
        if path.exists():
            data = path.read_bytes()
            assert b"AGE-SECRET-KEY" not in data and b"age-secret-key" not in data


def test_sealing_lookup_order_and_usability(store, clock):
    exact, tagged, domain = (age.generate().recipient() for _ in range(3))
    store.import_recipient("bob@x.test", exact)
    store.import_recipient("@x.test", domain)
    assert store.recipients_for(parse_address("bob@X.TEST")) == [exact]
    assert store.recipients_for(parse_address("bob+news@x.test")) == [exact]
    assert store.recipients_for(parse_address("carol@x.test")) == [domain]
    store.import_recipient("bob+news@x.test", tagged)
    assert store.recipients_for(parse_address("bob+news@x.test")) == [tagged]
    assert store.recipients_for(parse_address("bob@elsewhere.test")) == []
    # revoked keys fall through to the next owner; expired ones too
    store.revoke(fingerprint(str(exact)))
    assert store.recipients_for(parse_address("bob@x.test")) == [domain]
    store.import_recipient("dave@x.test", exact, expires=int(clock.now) + 60)
    assert store.recipients_for(parse_address("dave@x.test")) == [exact]
    clock.now += 61
    assert store.recipients_for(parse_address("dave@x.test")) == [domain]


def test_several_keys_per_owner_for_rotation(store):
    a, b = age.generate().recipient(), age.generate().recipient()
    store.import_recipient("bob@x.test", a)
    store.import_recipient("bob@x.test", b)
    assert store.recipients_for(parse_address("bob@x.test")) == [a, b]


def test_parent_domains_only_when_configured(paths, clock):
    db, key = paths
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock, parent_domains=True) as s:
        r = age.generate().recipient()
        s.import_recipient("@example.org", r)
        assert s.recipients_for(parse_address("a@mail.example.org")) == [r]
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as s:
        assert s.recipients_for(parse_address("a@mail.example.org")) == []


def test_opening_tries_every_identity_including_rotated(store):
    first = store.generate("bob@x.test")
    domain = store.generate("@x.test", classic=True)
    new, retired = store.rotate("bob@x.test")
    assert [r.fingerprint for r in retired] == [first.fingerprint]
    identities = store.identities_for(parse_address("bob+tag@x.test"))
    assert [str(i.recipient()) for i in identities] == [new.recipient, first.recipient, domain.recipient]
    # mail sealed to the retired key still opens
    data = age.encrypt(b"in flight", [age.parse_recipient(first.recipient)])
    assert age.decrypt(data, identities) == b"in flight"
    store.delete(first.fingerprint)
    assert str(identities[1].recipient()) not in [str(i.recipient()) for i in store.identities_for(parse_address("bob@x.test"))]


def test_policies(store):
    store.set_policy("@x.test", "require")
    store.set_policy("bob@x.test", "plain")
    assert store.policy_for(parse_address("bob@x.test")) == ("bob@x.test", "plain")
    assert store.policy_for(parse_address("bob+z@x.test")) == ("bob@x.test", "plain")
    assert store.policy_for(parse_address("carol@x.test")) == ("@x.test", "require")
    assert store.policy_for(parse_address("carol@y.test")) is None
    store.set_policy("@x.test", "opportunistic")
    assert store.policy_for(parse_address("carol@x.test")) == ("@x.test", "opportunistic")
    store.unset_policy("@x.test")
    assert store.policy_for(parse_address("carol@x.test")) is None
    with pytest.raises(NotFound):
        store.unset_policy("@x.test")
    with pytest.raises(KeystoreError):
        store.set_policy("@x.test", "sometimes")


def test_errors_leave_nothing_half_written(store):
    r = age.generate().recipient()
    store.import_recipient("bob@x.test", r)
    before = (len(store.list_keys()), len(store.audit_entries()))
    with pytest.raises(Conflict):
        store.import_recipient("bob@x.test", r)
    other = age.generate().recipient()
    with pytest.raises(Conflict):  # the second of two is a duplicate: neither lands
        store.import_many([("bob@x.test", other, None), ("bob@x.test", r, None)])
    with pytest.raises(NotFound):
        store.revoke("AAAA-BBBB-CCCC-DDDD")
    with pytest.raises(NotFound):
        store.rotate("nobody@x.test")
    assert (len(store.list_keys()), len(store.audit_entries())) == before


def test_missing_and_wrong_master_key_are_detected_never_replaced(paths, clock):
    db, key = paths
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as s:
        s.generate("bob@x.test")
    original = key.read_bytes()
    key.unlink()
    with SQLiteKeyStore(db, MasterKeySource(file=key)) as s:
        assert len(s.list_keys()) == 1  # public data needs no master key
        with pytest.raises(MasterKeyError, match="missing"):
            s.identities_for(parse_address("bob@x.test"))
    assert not key.exists()
    key.write_bytes(b"c3VyZWx5IG5vdCB0aGUgcmlnaHQga2V5IGF0IGFsbCE=\n")  # 32 bytes, wrong
    with SQLiteKeyStore(db, MasterKeySource(file=key)) as s, pytest.raises(MasterKeyError, match="wrong master key"):
        s.identities_for(parse_address("bob@x.test"))
    key.write_text("not base64 at all")
    with SQLiteKeyStore(db, MasterKeySource(file=key)) as s, pytest.raises(MasterKeyError, match="not a mailseal master key"):
        s.master()
    key.write_bytes(original)
    with SQLiteKeyStore(db, MasterKeySource(file=key)) as s:
        assert len(s.identities_for(parse_address("bob@x.test"))) == 1


def test_systemd_credential_is_read_never_created(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mailseal-master-key").write_text("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    from mailseal.keystore.masterkey import resolve

    source = resolve(tmp_path / "master.key", None)
    assert source.credential == creds / "mailseal-master-key"
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", source) as s:
        s.generate("a@x.test")
    assert not (tmp_path / "master.key").exists()


def test_passphrase_master_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MS_PASS", "correct horse battery staple")
    source = MasterKeySource(passphrase_env="MS_PASS")
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", source) as s:
        s.generate("a@x.test")
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", source) as s:
        assert s.identities_for(parse_address("a@x.test"))
    monkeypatch.setenv("MS_PASS", "wrong")
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", source) as s, pytest.raises(MasterKeyError, match="wrong"):
        s.master()
    monkeypatch.delenv("MS_PASS")
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", source) as s, pytest.raises(MasterKeyError, match="not set"):
        s.master()


def test_a_sealed_key_moved_to_another_owner_does_not_open(store, paths):
    store.generate("alice@x.test")
    store.generate("mallory@x.test")
    db = sqlite3.connect(paths[0])
    secret = db.execute("SELECT secret FROM keys WHERE owner = 'alice@x.test'").fetchone()[0]
    db.execute("UPDATE keys SET secret = ? WHERE owner = 'mallory@x.test'", (secret,))
    db.commit()
    db.close()
    with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1])) as fresh, pytest.raises(MasterKeyError):
        fresh.identities_for(parse_address("mallory@x.test"))


def test_audit_chain_detects_edits(store, paths):
    store.generate("a@x.test")
    store.set_policy("@x.test", "require")
    assert first_broken(store.audit_entries()) is None
    db = sqlite3.connect(paths[0])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
    db.execute("DROP TRIGGER audit_no_update")  # what a deliberate editor would do
    db.execute("UPDATE audit SET detail = '{\"policy\": \"plain\"}' WHERE seq = 3")
    db.commit()
    db.close()
    assert first_broken(store.audit_entries()) == (3, "was altered")


def test_live_changes_are_seen_by_another_open_store(store, paths):
    with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1])) as daemon:
        address = parse_address("bob@x.test")
        assert daemon.recipients_for(address) == []
        r = age.generate().recipient()
        store.import_recipient("bob@x.test", r)
        assert daemon.recipients_for(address) == [r]
        store.revoke("bob@x.test")
        assert daemon.recipients_for(address) == []


def test_not_a_keystore_and_corrupt_files(tmp_path):
    other = tmp_path / "other.sqlite3"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE x (y)")
    db.commit()
    db.close()
    with pytest.raises(StoreUnavailable, match="not a mailseal keystore"):
        SQLiteKeyStore(other, MasterKeySource(file=tmp_path / "k"))
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="damaged or not a mailseal keystore"):
        SQLiteKeyStore(junk, MasterKeySource(file=tmp_path / "k"))


def test_newer_schema_is_refused(store, paths):
    db = sqlite3.connect(paths[0])
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreUnavailable, match="newer than this mailseal"):
        SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1]))


def test_locked_database_is_a_clear_error(store, paths):
    blocker = sqlite3.connect(paths[0], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1])) as other:
            other._db.execute("PRAGMA busy_timeout = 100")
            with pytest.raises(StoreUnavailable, match="locked"):
                other.set_policy("@x.test", "plain")
    finally:
        blocker.execute("ROLLBACK")


def test_card_round_trip_and_damage(store):
    record = store.generate("bob@x.test")
    card = render_card(record)
    assert "AGE-SECRET" not in card
    [parsed] = parse_cards(card)
    assert (parsed.owner, str(parsed.recipient)) == ("bob@x.test", record.recipient)
    damaged = card.replace(record.fingerprint, "AAAA-BBBB-CCCC-DDDD")
    with pytest.raises(KeystoreError, match="fingerprint does not match"):
        parse_cards(damaged)
    assert parse_cards(record.recipient) is None
