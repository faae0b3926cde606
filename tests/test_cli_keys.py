"""`mailseal keys …`, `mailseal policy …` and `check-config` through the real command line."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from mailseal import age

from . import tamper
from .conftest import ROOT, run_cli


@pytest.fixture()
def cfg(tmp_path):
    path = tmp_path / "mailseal.toml"
    path.write_text('[keystore]\npath = "state/keystore.sqlite3"\nmaster_key_file = "state/master.key"\n\n'
                    '[outbound]\nlisten = "127.0.0.1:10025"\n')
    return path


def ms(cfg, *args, input: bytes = b""):
    return run_cli("-c", str(cfg), *args, input=input)


def ok(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode()


def fails(result, fragment: str, status: int = 2) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    err = result.stderr.decode()
    assert err.count("\n") == 1 and fragment in err, err
    assert "Traceback" not in err


def test_generate_export_import_between_two_gateways(tmp_path, cfg):
    other = tmp_path / "other.toml"
    other.write_text('[keystore]\npath = "b/ks.sqlite3"\n')
    out = ok(ms(other, "keys", "generate", "bob@b.test", "--label", "Bob"))
    assert "generated mlkem768x25519 key" in out
    card = ok(ms(other, "keys", "export", "bob@b.test"))
    assert card.startswith("# mailseal public key card\naddress: bob@b.test\n")
    assert "AGE-SECRET" not in card
    card_file = tmp_path / "bob.card"
    card_file.write_text(card)
    assert max(len(line) for line in card.splitlines()) <= 76  # survives mail clients
    imported = ok(ms(cfg, "keys", "import", "bob@b.test", str(card_file)))
    assert "imported mlkem768x25519 key" in imported and "imported ed25519+mldsa65 key" in imported
    listed = json.loads(ok(ms(cfg, "keys", "list", "--json")))
    assert [(k["owner"], k["scope"], k["kind"], k["status"]) for k in listed] == [
        ("bob@b.test", "remote", "mlkem768x25519", "active"), ("bob@b.test", "remote", "ed25519+mldsa65", "active")]
    assert all(k["fingerprint"] in card for k in listed)
    # the default master key file sits next to the keystore, private
    assert stat.S_IMODE(os.stat(tmp_path / "b" / "master.key").st_mode) == 0o600


def test_import_forms(tmp_path, cfg):
    one, two, classic = age.generate().recipient(), age.generate().recipient(), age.generate(classic=True).recipient()
    ok(ms(cfg, "keys", "import", "a@x.test", str(one)))
    listing = tmp_path / "keys.txt"
    listing.write_text(f"# two keys\n{two}\n\n{classic}\n")
    assert ok(ms(cfg, "keys", "import", "@x.test", str(listing))).count("imported") == 2
    ok(ms(cfg, "keys", "import", "c@x.test", "-", input=f"{two}\n".encode()))
    table = ok(ms(cfg, "keys", "list"))
    lines = table.splitlines()
    assert lines[0].split() == ["OWNER", "SCOPE", "TYPE", "FINGERPRINT", "STATUS", "CREATED", "EXPIRES", "LABEL"]
    assert len(lines) == 5
    assert len({line.index("remote") for line in lines[1:]}) == 1  # aligned columns


@pytest.mark.parametrize("args, fragment", [
    (["keys", "generate", "not-an-address"], "invalid address"),
    (["keys", "import", "bob@x.test", "age1notakey"], "bad recipient 'age1notakey': not a valid age recipient"),
    (["keys", "import", "bob@x.test", "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"], "that is a private key"),
    (["keys", "import", "bob@x.test", "/no/such/file"], "no such file"),
    (["keys", "revoke", "AAAA-BBBB-CCCC-DDDD"], "no unrevoked key"),
    (["keys", "rotate", "nobody@x.test"], "no active local key"),
    (["keys", "delete", "nobody@x.test"], "no key matches"),
    (["keys", "show", "nobody@x.test"], "no key matches"),
    (["keys", "export", "nobody@x.test"], "no active local key"),
    (["policy", "set", "@x.test", "sometimes"], "policy must be one of"),
    (["policy", "unset", "@x.test"], "no policy"),
    (["keys", "frobnicate"], "invalid choice"),
])
def test_bad_input_one_line_exit_2(cfg, args, fragment):
    ok(ms(cfg, "policy", "set", "@y.test", "plain"))  # the keystore exists
    before = sqlite3.connect(cfg.parent / "state" / "keystore.sqlite3").execute("SELECT count(*) FROM audit").fetchone()
    fails(ms(cfg, *args), fragment)
    after = sqlite3.connect(cfg.parent / "state" / "keystore.sqlite3").execute("SELECT count(*) FROM audit").fetchone()
    assert before == after


def test_wrong_type_key_in_file_and_duplicate(tmp_path, cfg):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{age.generate().recipient()}\nAGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX\n")
    fails(ms(cfg, "keys", "import", "a@x.test", str(bad)), "line 2: this is a private key")
    fails(ms(cfg, "keys", "list"), "does not exist (")  # nothing was created by the failed import
    key = str(age.generate().recipient())
    ok(ms(cfg, "keys", "import", "a@x.test", key))
    fails(ms(cfg, "keys", "import", "a@x.test", key), "already has the key")


def test_card_for_another_address_is_refused(tmp_path, cfg):
    ok(ms(cfg, "keys", "generate", "bob@x.test"))
    card = tmp_path / "c"
    card.write_text(ok(ms(cfg, "keys", "export", "bob@x.test")))
    fails(ms(cfg, "keys", "import", "eve@x.test", str(card)), "the key card is for bob@x.test")


def test_revoke_rotate_delete_show(cfg):
    ok(ms(cfg, "keys", "generate", "bob@x.test"))
    first, signing = json.loads(ok(ms(cfg, "keys", "list", "--json")))
    assert (first["kind"], signing["kind"]) == ("mlkem768x25519", "ed25519+mldsa65")
    first, signing = first["fingerprint"], signing["fingerprint"]
    out = ok(ms(cfg, "keys", "rotate", "bob@x.test"))
    assert f"retired (still opens mail): {first}" in out
    assert "new ed25519+mldsa65 key" in out and f"retired (still opens mail): {signing}" in out
    keys = json.loads(ok(ms(cfg, "keys", "list", "--json")))
    assert sorted((k["kind"], k["status"]) for k in keys) == [
        ("ed25519+mldsa65", "active"), ("ed25519+mldsa65", "retired"),
        ("mlkem768x25519", "active"), ("mlkem768x25519", "retired")]
    assert "key.rotate" in ok(ms(cfg, "keys", "audit"))
    shown = ok(ms(cfg, "keys", "show", first))
    assert f"fingerprint: {first}" in shown and "retired:" in shown and "AGE-SECRET" not in shown
    ok(ms(cfg, "keys", "revoke", first.replace("-", "").lower(), "--reason", "laptop lost"))
    assert "reason:      laptop lost" in ok(ms(cfg, "keys", "show", first))
    ok(ms(cfg, "keys", "delete", first))
    assert len(json.loads(ok(ms(cfg, "keys", "list", "--json")))) == 3


def test_policy_commands(cfg):
    ok(ms(cfg, "policy", "set", "@Partner.TEST", "require"))
    ok(ms(cfg, "policy", "set", "ops@partner.test", "plain"))
    assert json.loads(ok(ms(cfg, "policy", "list", "--json"))) == [
        {"owner": "@partner.test", "policy": "require", "updated": pytest.approx(time.time(), abs=120)},
        {"owner": "ops@partner.test", "policy": "plain", "updated": pytest.approx(time.time(), abs=120)},
    ]
    table = ok(ms(cfg, "policy", "list"))
    assert table.splitlines()[1].split()[:2] == ["@partner.test", "require"]
    ok(ms(cfg, "policy", "unset", "ops@partner.test"))
    assert "ops@" not in ok(ms(cfg, "policy", "list"))


def test_audit_verify_catches_a_hand_edit(cfg):
    ok(ms(cfg, "keys", "generate", "bob@x.test", "--signing", "none"))
    ok(ms(cfg, "policy", "set", "@x.test", "require"))
    assert "audit log intact: 3 entries" in ok(ms(cfg, "keys", "audit", "--verify"))
    log = ok(ms(cfg, "keys", "audit"))
    assert "key.generate" in log and "policy.set" in log
    db = sqlite3.connect(cfg.parent / "state" / "keystore.sqlite3")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET subject = '@y.test' WHERE action = 'policy.set'")
    db.commit()
    db.close()
    fails(ms(cfg, "keys", "audit", "--verify"), "audit log entry 3 was altered", status=1)


def _victim(cfg) -> dict:
    """The keystore of tamper.victim, made through the API at the paths cfg names."""
    from mailseal import config
    from mailseal.keystore import open_keystore

    with open_keystore(config.load(cfg).keystore, actor="test") as store:
        return tamper.victim(store)


@pytest.mark.parametrize("attack, problem", tamper.ATTACKS, ids=tamper.ids(tamper.ATTACKS))
def test_audit_verify_names_what_was_changed_without_the_master_key(cfg, attack, problem):
    victim = _victim(cfg)
    db = cfg.parent / "state" / "keystore.sqlite3"
    assert "audit log intact: 7 entries" in ok(ms(cfg, "keys", "audit", "--verify"))
    attack(db, victim)
    result = ms(cfg, "keys", "audit", "--verify")
    fails(result, problem, status=1)
    assert result.stderr.decode() == f"mailseal: refused: keystore {db} was changed without the master key: {problem}\n"
    # No change is made on top of it; the lists still show it, with a warning.
    fails(ms(cfg, "policy", "set", "@b.test", "require"), "was changed without the master key")
    if attack is not tamper.delete_integrity_record:  # that one does not even open
        listed = ms(cfg, "policy", "list")
        assert listed.returncode == 0 and "@b.test" in listed.stdout.decode()
        assert listed.stderr.decode().startswith("mailseal: warning: keystore ")


def test_audit_accept_after_review(cfg):
    _victim(cfg)
    db = cfg.parent / "state" / "keystore.sqlite3"
    assert "nothing to accept" in ok(ms(cfg, "keys", "audit", "--accept"))
    tamper.flip_policy_to_plain(db, {})
    fails(ms(cfg, "keys", "audit", "--verify"), "policy for @b.test was added or changed", status=1)
    out = ok(ms(cfg, "keys", "audit", "--accept"))
    assert "recorded in the audit log: policy for @b.test was added or changed" in out
    assert "audit log intact: 8 entries" in ok(ms(cfg, "keys", "audit", "--verify"))
    assert "keystore.accept" in ok(ms(cfg, "keys", "audit")).splitlines()[-1]
    fails(ms(cfg, "keys", "audit", "--verify", "--accept"), "not allowed with argument")


def test_missing_master_key_and_corrupt_database(cfg):
    ok(ms(cfg, "keys", "generate", "bob@x.test"))
    master = cfg.parent / "state" / "master.key"
    saved = master.read_bytes()
    master.unlink()
    fails(ms(cfg, "keys", "generate", "carol@x.test"), "missing")
    assert not master.exists()
    fails(ms(cfg, "check-config"), "missing")
    master.write_bytes(saved)
    db = cfg.parent / "state" / "keystore.sqlite3"
    db.write_bytes(b"\x00garbage" * 1000)
    fails(ms(cfg, "keys", "list"), "damaged or not a mailseal keystore")


def test_no_configuration_is_a_clear_error(tmp_path):
    result = run_cli("keys", "list", cwd=tmp_path, env={"MAILSEAL_CONFIG": ""})
    fails(result, "no configuration file")


def test_check_config_reports_permissions_and_mistakes(tmp_path, cfg):
    ok(ms(cfg, "keys", "generate", "bob@x.test"))
    assert "configuration OK" in ok(ms(cfg, "check-config"))
    os.chmod(cfg.parent / "state" / "keystore.sqlite3", 0o644)
    fails(ms(cfg, "check-config"), "readable or writable by others")
    os.chmod(cfg.parent / "state" / "keystore.sqlite3", 0o600)
    bad = tmp_path / "bad.toml"
    for text, fragment in [("[inbound]\nreplay_window = \"a week\"\n", "[inbound] replay_window"),
                           ("[outbound]\ndefault_policy = \"always\"\n", "must be one of"),
                           ("[server]\nallowed_clients = [\"not-a-net\"]\n", "allowed_clients"),
                           ("[outbound]\nlisten = \"localhost\"\n", "host:port"),
                           ("[outbund]\n", "unknown section"),
                           ("[keystore]\npaht = \"x\"\n", "unknown setting"),
                           ("[server]\nworkers = 0\n", "[server] workers"),
                           ("not toml", "not valid TOML")]:
        bad.write_text(text)
        result = run_cli("-c", str(bad), "check-config")
        err = result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err, err
        lines = err.splitlines()
        # the mistake, and what these small configurations lack (a keystore, listeners)
        assert sum(fragment in line for line in lines) == 1 and len(lines) <= 3, err
        assert all(line.startswith(f"{bad}: ") for line in lines), err


def test_cli_writer_and_daemon_reader_at_once(tmp_path, cfg):
    """A reader process (as the daemon) looks keys up in a loop while the CLI
    imports and revokes: it never fails, never sees a state the writer never
    made, never sees a revoked key come back, and ends on the final state."""
    ok(ms(cfg, "policy", "set", "@x.test", "opportunistic"))
    state = cfg.parent / "state"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(state)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    states = {f"u{i}@x.test": [[]] for i in range(8)}  # what the writer made, in order
    try:
        for i in range(8):
            key = str(age.generate().recipient())
            ok(ms(cfg, "keys", "import", f"u{i}@x.test", key))
            ok(ms(cfg, "keys", "revoke", f"u{i}@x.test"))
            states[f"u{i}@x.test"] += [[key], []]
        key = str(age.generate().recipient())
        ok(ms(cfg, "keys", "import", "u0@x.test", key))
        states["u0@x.test"].append([key])
    finally:
        (state / "final.tmp").write_text(json.dumps({o: s[-1] for o, s in states.items()}))
        (state / "final.tmp").rename(state / "final.json")  # whole, for the reader
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["converged"], seen  # the last change reached the reader
    for owner, history in seen["history"].items():
        position = 0
        for view in history:  # each view is a later (or the same) state of the writer's
            assert view in states[owner][position:], (owner, history, states[owner])
            position = states[owner].index(view, position)


READER = r"""
import json, sys, time, pathlib
from mailseal.addresses import parse_address
from mailseal.keystore import SQLiteKeyStore, MasterKeySource
state = pathlib.Path(sys.argv[1])
store = SQLiteKeyStore(state / "keystore.sqlite3", MasterKeySource(file=state / "master.key"), create=False)
owners = [f"u{i}@x.test" for i in range(8)]
history = {o: [] for o in owners}
final, deadline = None, None
while True:
    views = {}
    for owner in owners:
        views[owner] = sorted(str(r) for r in store.recipients_for(parse_address(owner)))
        store.policy_for(parse_address(owner))
        if history[owner][-1:] != [views[owner]]:
            history[owner].append(views[owner])
    if final is None and (state / "final.json").exists():
        final, deadline = json.loads((state / "final.json").read_text()), time.monotonic() + 10
    if final is not None and (views == final or time.monotonic() > deadline):
        break
print(json.dumps({"converged": views == final, "history": history}))
"""


def test_locked_keystore_is_one_line_exit_2(cfg):
    ok(ms(cfg, "policy", "set", "@x.test", "plain"))
    blocker = sqlite3.connect(cfg.parent / "state" / "keystore.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        fails(ms(cfg, "policy", "set", "@x.test", "require"), "locked by another process")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert json.loads(ok(ms(cfg, "policy", "list", "--json")))[0]["policy"] == "plain"


def test_master_key_kind_that_does_not_match_the_keystore_is_one_line_exit_2(tmp_path, cfg):
    """A file-keyed keystore opened with passphrase_env, and the reverse: no traceback."""
    ok(ms(cfg, "keys", "generate", "bob@x.test"))
    by_passphrase = tmp_path / "passphrase.toml"
    by_passphrase.write_text('[keystore]\npath = "state/keystore.sqlite3"\npassphrase_env = "MS_PASS"\n')
    result = run_cli("-c", str(by_passphrase), "keys", "generate", "carol@x.test", env={"MS_PASS": "secret"})
    fails(result, "made with a master key file, not a passphrase")
    other = tmp_path / "other.toml"
    other.write_text('[keystore]\npath = "p/keystore.sqlite3"\npassphrase_env = "MS_PASS"\n')
    ok(run_cli("-c", str(other), "keys", "generate", "dave@p.test", env={"MS_PASS": "secret"}))
    by_file = tmp_path / "file.toml"
    by_file.write_text('[keystore]\npath = "p/keystore.sqlite3"\nmaster_key_file = "state/master.key"\n')
    fails(run_cli("-c", str(by_file), "keys", "generate", "erin@p.test"), "made with a passphrase")
    assert {k["owner"] for k in json.loads(ok(ms(cfg, "keys", "list", "--json")))} == {"bob@x.test"}


def test_an_older_copy_put_back_by_hand_is_refused_a_restore_on_purpose_is_not(tmp_path, cfg):
    ok(ms(cfg, "keys", "generate", "bob@x.test"))
    ok(ms(cfg, "keys", "backup", str(tmp_path / "ks.bak")))
    db = cfg.parent / "state" / "keystore.sqlite3"
    with sqlite3.connect(db) as live, sqlite3.connect(tmp_path / "old.sqlite3") as copy:
        live.backup(copy)
    ok(ms(cfg, "policy", "set", "@x.test", "require"))  # what the rollback would undo
    (tmp_path / "old.sqlite3").replace(db)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    fails(ms(cfg, "keys", "audit", "--verify"), "is older than its head file", status=1)
    assert "restored" in ok(ms(cfg, "keys", "restore", str(tmp_path / "ks.bak"), "--force"))
    assert "audit log intact" in ok(ms(cfg, "keys", "audit", "--verify"))
    assert "keystore.restore" in ok(ms(cfg, "keys", "audit")).splitlines()[-1]
