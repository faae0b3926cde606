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
    Tampered,
    fingerprint,
    parse_cards,
    render_card,
)

from . import tamper


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
    with SQLiteKeyStore(paths[0], MasterKeySource(file=paths[1])) as fresh:
        with pytest.raises(Tampered, match="key 2 of mallory@x.test .* was added or changed"):
            fresh.identities_for(parse_address("mallory@x.test"))
        # The sealed secret is bound to its owner too, under the row's MAC.
        with pytest.raises(MasterKeyError, match="does not open"):
            fresh.master().open(secret, b"mailseal identity v1\x00mallory@x.test\x00" + fresh.find("mallory@x.test")[0].recipient.encode())


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


# --- integrity: the attacker edits the file with sqlite3, without the master key -------

@pytest.mark.parametrize("attack, problem", tamper.ATTACKS, ids=tamper.ids(tamper.ATTACKS))
def test_every_edit_without_the_master_key_is_detected_and_never_used(paths, clock, attack, problem):
    db, key = paths
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as store:
        victim = tamper.victim(store)
        assert store.verify().audit_seq == 7
        bob, carol = parse_address("bob@b.test"), parse_address("carol@b.test")
        assert store.recipients_for(bob) == [victim["bob"].recipient()]
        attack(db, victim)
        # The running reader (the daemon's view): nothing it looks up is used.
        for lookup in (lambda: store.recipients_for(bob), lambda: store.policy_for(carol)):
            with pytest.raises(Tampered, match="was changed without the master key"):
                lookup()
        with pytest.raises(Tampered, match="was changed without the master key"):  # no change on top of it
            store.set_policy("@b.test", "require")
    try:  # a change by someone who has not verified: refused, or it leaves the edit detectable
        with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as unaware:
            unaware.import_recipient("dave@d.test", age.generate().recipient())
    except Tampered:
        pass
    try:
        with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as fresh:
            fresh.verify()
    except Tampered as exc:
        assert str(exc) == f"keystore {db} was changed without the master key: {problem}"
    else:
        pytest.fail("the edit went unnoticed")


def test_a_tampered_key_is_not_exported(paths, clock):
    db, key = paths
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as store:
        record = store.generate("bob@b.test")
        tamper.connect(db).execute("UPDATE keys SET recipient = ? WHERE id = ?",
                                   (tamper.EVE_KEY, record.id)).connection.close()
        with pytest.raises(Tampered, match=f"key {record.id} of bob@b.test"):
            store.export("bob@b.test")


def test_changes_through_the_keystore_keep_it_verifiable(store):
    first = store.generate("bob@x.test")
    store.generate("@x.test", classic=True)
    store.rotate("bob@x.test")
    store.import_many([("a@y.test", age.generate().recipient(), None), ("b@y.test", age.generate().recipient(), 5)])
    store.revoke(first.fingerprint, "lost laptop")
    store.delete("b@y.test")
    store.set_policy("@y.test", "plain")
    store.set_policy("@y.test", "require")
    store.set_policy("a@y.test", "plain")
    store.unset_policy("a@y.test")
    record = store.verify()
    assert (record.tallies["keys"].count, record.tallies["policies"].count) == (4, 1)
    assert record.audit_seq == len(store.audit_entries()) == 13  # rotate: key.generate and key.rotate


def test_an_older_copy_of_the_whole_file_is_caught_by_the_head_file(tmp_path, clock):
    db, key, head_file = tmp_path / "ks.sqlite3", tmp_path / "master.key", tmp_path / "ks.head"
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock, head_file=head_file) as store:
        victim = tamper.victim(store)
        old = tmp_path / "old.sqlite3"
        with sqlite3.connect(old) as copy:
            store._db.backup(copy)
        store.revoke("bob@b.test", "compromised")  # the change the attacker wants undone
    old.replace(db)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    with SQLiteKeyStore(db, MasterKeySource(file=key), head_file=head_file) as rolled_back:
        with pytest.raises(Tampered, match="older than its head file .* put back from an earlier copy"):
            rolled_back.recipients_for(parse_address("bob@b.test"))
    # Without the head file the copy is consistent in itself: what the docs say cannot be seen.
    with SQLiteKeyStore(db, MasterKeySource(file=key)) as unwatched:
        assert unwatched.recipients_for(parse_address("bob@b.test")) == [victim["bob"].recipient()]
    # A deleted keystore is not silently replaced by an empty one either.
    db.unlink()
    with pytest.raises(StoreUnavailable, match="is missing, but its head file"):
        SQLiteKeyStore(db, MasterKeySource(file=key), head_file=head_file)
    assert not db.exists()


def test_accept_after_review_records_the_problem_and_verifies_again(paths, clock):
    db, key = paths
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as store:
        tamper.victim(store)
    tamper.edit_old_entry_and_rechain(db, {})
    tamper.flip_policy_to_plain(db, {})
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock) as store:
        assert store.accept() == "audit log entry 2 was altered"
        assert store.verify().audit_seq == 8
        assert store.policy_for(parse_address("x@b.test")) == ("@b.test", "plain")
        last = store.audit_entries()[-1]
        assert (last.action, last.detail) == ("keystore.accept", {"problem": "audit log entry 2 was altered"})
        assert store.accept() is None
    tamper.delete_integrity_record(db, {})
    with pytest.raises(Tampered, match="integrity record was deleted"):
        SQLiteKeyStore(db, MasterKeySource(file=key))
    with SQLiteKeyStore(db, MasterKeySource(file=key), accept=True) as store:
        assert store.accept() == "its integrity record was deleted"
        store.verify()


def _legacy_keystore(db, key, *, break_chain: bool = False) -> bytes:
    """A keystore as mailseal wrote it before its integrity was keyed: schema 1, SHA-256 chain."""
    import base64
    import hashlib
    import json

    from mailseal.keystore.masterkey import MasterKey
    from mailseal.keystore.sqlite import MIGRATIONS, _statements

    master = os.urandom(32)
    key.write_bytes(base64.b64encode(master) + b"\n")
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO meta VALUES ('master_key_check', ?)",
                 (MasterKey(master).seal(b"", b"mailseal master key check v1"),))
    bob = str(age.generate().recipient())
    conn.execute("INSERT INTO keys (scope, owner, kind, recipient, fingerprint, source, created) "
                 "VALUES ('remote', 'bob@b.test', 'mlkem768x25519', ?, ?, 'imported', 1)", (bob, fingerprint(bob)))
    conn.execute("INSERT INTO policies VALUES ('@b.test', 'require', 1)")
    prev = "0" * 64
    for seq, (action, subject, detail) in enumerate([("keystore.create", str(db), {}),
                                                     ("key.import", "bob@b.test", {"fingerprint": fingerprint(bob)}),
                                                     ("policy.set", "@b.test", {"policy": "require"})], 1):
        body = json.dumps([seq, 1, "old", action, subject, detail], sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()
        if break_chain and seq == 2:
            subject = "someone@b.test"  # edited, chain not recomputed
        conn.execute("INSERT INTO audit VALUES (?, 1, 'old', ?, ?, ?, ?, ?)",
                     (seq, action, subject, json.dumps(detail), prev, digest))
        prev = digest
    conn.close()
    return master


def test_an_old_keystore_is_keyed_when_first_opened_with_the_master_key(paths, clock):
    db, key = paths
    _legacy_keystore(db, key)
    before = [row[0] for row in sqlite3.connect(db).execute("SELECT hash FROM audit ORDER BY seq")]
    with SQLiteKeyStore(db, MasterKeySource(file=key), clock=clock, actor="daemon") as store:
        entries = store.audit_entries()
        assert [e.action for e in entries] == ["keystore.create", "key.import", "policy.set", "keystore.upgrade"]
        assert entries[-1].detail == {"schema": [1, 5], "integrity": "keyed under the master key"}
        assert not set(before) & {e.hash for e in entries}  # re-keyed from the first entry
        assert store.verify().tallies["keys"].count == 1
        assert store.policy_for(parse_address("x@b.test")) == ("@b.test", "require")
    tamper.flip_policy_to_plain(db, {})  # from now on an edit is caught
    with SQLiteKeyStore(db, MasterKeySource(file=key)) as store, pytest.raises(Tampered, match="policy for @b.test"):
        store.verify()


def test_an_old_keystore_is_never_keyed_without_its_master_key_nor_over_a_broken_chain(paths, clock):
    db, key = paths
    master = _legacy_keystore(db, key, break_chain=True)
    key.unlink()
    with pytest.raises(MasterKeyError, match="missing"):
        SQLiteKeyStore(db, MasterKeySource(file=key))
    import base64

    key.write_bytes(base64.b64encode(master))
    with pytest.raises(Tampered, match="audit log entry 2 was altered \\(before the chain was keyed\\)"):
        SQLiteKeyStore(db, MasterKeySource(file=key))
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 1  # left as it was
    with SQLiteKeyStore(db, MasterKeySource(file=key), accept=True) as store:
        assert store.accept() == "audit log entry 2 was altered (before the chain was keyed)"
        assert store.audit_entries()[-1].detail["accepted"] == "audit log entry 2 was altered (before the chain was keyed)"
        store.verify()
