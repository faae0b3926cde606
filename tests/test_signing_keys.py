"""Signing identities: the composite key, its storage, rotation and key cards."""

from __future__ import annotations

import sqlite3

import pytest

from mailseal import signing
from mailseal.addresses import parse_address
from mailseal.keystore import KeystoreError, MasterKeySource, SQLiteKeyStore, parse_cards, render_card

MESSAGE = b"mailseal test message"


@pytest.fixture()
def store(tmp_path):
    with SQLiteKeyStore(tmp_path / "ks.sqlite3", MasterKeySource(file=tmp_path / "master.key"), actor="t") as s:
        yield s


def test_composite_needs_both_halves():
    key = signing.generate(signing.HYBRID)
    public = signing.parse_verify_key(str(key.public()))
    good = key.sign(MESSAGE)
    public.verify(MESSAGE, good)
    broken_ed = bytes([good[0] ^ 1]) + good[1:]
    broken_ml = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(signing.BadSignature, match="Ed25519"):
        public.verify(MESSAGE, broken_ed)
    with pytest.raises(signing.BadSignature, match="ML-DSA-65"):
        public.verify(MESSAGE, broken_ml)
    # An attacker who breaks one algorithm cannot pass with half a signature.
    with pytest.raises(signing.BadSignature):
        public.verify(MESSAGE, good[: signing.ED25519_SIZE])
    with pytest.raises(signing.BadSignature):
        public.verify(MESSAGE + b"!", good)


def test_ed25519_only_kind_and_key_strings_round_trip():
    key = signing.generate(signing.ED25519)
    again = signing.parse_signing_key(str(key))
    sig = again.sign(MESSAGE)
    assert len(sig) == signing.ED25519_SIZE
    signing.parse_verify_key(str(key.public())).verify(MESSAGE, sig)
    with pytest.raises(signing.SigningKeyError):
        signing.parse_verify_key(str(key.public())[:-8])


def test_generate_keeps_the_signing_key_sealed_at_rest(store, tmp_path):
    records = store.generate_keys("@a.test", signing_kind=signing.HYBRID)
    assert [r.kind for r in records] == ["mlkem768x25519", "ed25519+mldsa65"]
    signer, key = store.signing_key_for(parse_address("alice@a.test"))
    assert signer == "a.test" and str(key.public()) == records[1].recipient
    raw = sqlite3.connect(tmp_path / "ks.sqlite3").execute(
        "SELECT secret FROM keys WHERE kind = 'ed25519+mldsa65'").fetchone()[0]
    seeds = str(key).split(":", 1)[1]
    assert b"MAILSEAL-SIGNING-KEY" not in raw and seeds.encode() not in raw
    # signing keys are never encryption recipients or identities
    assert [str(i.recipient()) for i in store.identities_for(parse_address("x@a.test"))] == [records[0].recipient]
    assert [e.action for e in store.audit_entries()].count("key.generate") == 2


def test_rotation_retires_the_signer_but_its_key_still_verifies(store):
    old = store.generate_keys("@a.test", signing_kind=signing.HYBRID)[1]
    _, old_key = store.signing_key_for(parse_address("a@a.test"))
    (_, _), (new, retired) = store.rotate_keys("@a.test")
    assert [r.fingerprint for r in retired] == [old.fingerprint] and new.kind == "ed25519+mldsa65"
    _, current = store.signing_key_for(parse_address("a@a.test"))
    assert str(current.public()) == new.recipient
    assert {str(k) for k in store.verify_keys_for("a.test")} == {old.recipient, new.recipient}
    store.revoke(old.fingerprint)
    assert [str(k) for k in store.verify_keys_for("a.test")] == [new.recipient]
    assert str(old_key.public()) == old.recipient


def test_card_lines_are_short_and_survive_rewrapping_and_quoting(store):
    records = store.generate_keys("@a.test", signing_kind=signing.HYBRID)
    card = "\n".join(render_card(r) for r in records)
    assert max(map(len, card.splitlines())) <= 76
    flat_key_lines = []
    for line in card.splitlines():
        if line.startswith(" "):  # a client that re-wraps at 40 columns and drops the indent
            flat_key_lines += [line.strip()[i : i + 40] for i in range(0, len(line.strip()), 40)]
        else:
            flat_key_lines.append(line)
    rewrapped = "\n".join(flat_key_lines)
    quoted = "\n".join("> " + line for line in card.splitlines())
    for text in (card, rewrapped, quoted, "> " + quoted.replace("\n", "\n> ")):
        parsed = parse_cards(text)
        assert [str(c.recipient) for c in parsed] == [r.recipient for r in records]
    assert isinstance(parsed[1].recipient, signing.VerifyKey)


def test_old_one_line_cards_still_import(store):
    record = store.generate("bob@b.test")
    old = (f"# mailseal public key card\naddress: bob@b.test\ntype: {record.kind}\nfingerprint: {record.fingerprint}\n"
           f"created: 2026-01-01T00:00:00Z\nexpires: never\nkey: {record.recipient}\n")
    [card] = parse_cards(old)
    assert str(card.recipient) == record.recipient


def test_importing_a_card_records_the_signing_key_for_the_domain(store, tmp_path):
    with SQLiteKeyStore(tmp_path / "a.sqlite3", MasterKeySource(file=tmp_path / "a.key"), actor="a") as a:
        records = a.generate_keys("@a.test", signing_kind=signing.HYBRID)
        card = "\n".join(render_card(r) for r in records)
    cards = parse_cards(card)
    store.import_many([(c.owner, c.recipient, c.expires) for c in cards])
    assert [str(k) for k in store.verify_keys_for("a.test")] == [records[1].recipient]
    assert store.verify_keys_for("c.test") == []
    lines = card.splitlines()
    last = len(lines) - 2  # a wrapped line of the signing key
    lines[last] = " " + lines[last][1:][::-1]
    edited = "\n".join(lines)
    with pytest.raises(KeystoreError):
        parse_cards(edited)
