"""`mailseal keys backup` / `keys restore`: a consistent copy of the live
keystore, sealed; restored into a fresh directory it opens mail sealed before."""

from __future__ import annotations

import json
import shutil

from mailseal import age, bundle

from .conftest import run_cli
from .harness import Daemon, Sink, smtp_transaction
from .test_quarantine_release import one_line

MESSAGE = (b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: before the backup\r\n"
           b"Message-ID: <backup@a.test>\r\n\r\nsealed before the backup, opened after the restore\r\n")


def cli(daemon: Daemon, *args: str):
    return run_cli("-c", str(daemon.config), *args)


def bob_recipient(daemon: Daemon) -> age.Recipient:
    [key] = [k["recipient"] for k in json.loads(daemon.cli("keys", "list", "--json"))
             if k["owner"] == "bob@b.test" and k["kind"] == "mlkem768x25519"]
    return age.parse_recipient(key)


def opens_through_inbound(daemon: Daemon, sealed: bytes) -> bytes:
    with Sink() as final:
        daemon.config.write_text(daemon.config.read_text().replace("127.0.0.1:9", f"127.0.0.1:{final.port}"))
        daemon.start()
        try:
            t = smtp_transaction(daemon.inbound_port, "alice@a.test", ["bob@b.test"], sealed)
            assert t.data[0] == 250, t.data
            [got] = final.wait(1)
        finally:
            daemon.stop()
    return got.data


def test_backup_of_the_live_keystore_restored_in_a_fresh_directory_opens_old_mail(tmp_path):
    b = Daemon(tmp_path / "b", inbound={"next_hop": "127.0.0.1:9"})
    b.cli("keys", "generate", "@b.test")
    b.start()  # the daemon holds the keystore open: what follows stays in its WAL file
    try:
        b.cli("keys", "generate", "bob@b.test")
        b.cli("policy", "set", "@c.test", "require")
        sealed = bundle.seal(MESSAGE, [bob_recipient(b)], eol=b"\r\n", bind=["bob@b.test"])
        plain = tmp_path / "keystore.bak"
        out = b.cli("keys", "backup", str(plain))
        (tmp_path / "pw").write_text("correct horse battery staple\n")
        protected = tmp_path / "keystore-pw.bak"
        out_pw = b.cli("keys", "backup", str(protected), "--passphrase-file", str(tmp_path / "pw"))
        keys = len(json.loads(b.cli("keys", "list", "--json")))  # signing keys beside the two
    finally:
        b.stop()
    assert f"{keys} keys" in out and "1 policies" in out and "sealed with the master key" in out
    assert "the master key is not in it" in out and "sealed with a passphrase" in out_pw
    assert (plain.stat().st_mode & 0o777) == 0o600
    for backup in (plain, protected):
        data = backup.read_bytes()
        assert b"bob@b.test" not in data and b"@c.test" not in data  # sealed, unlike the keystore file
    master = b.dir / "state" / "master.key"

    # The master key was backed up on its own; the keystore comes from the backup.
    for name, backup, extra in (("fresh", plain, ()), ("fresh-pw", protected, ("--passphrase-file", str(tmp_path / "pw")))):
        fresh = Daemon(tmp_path / name, inbound={"next_hop": "127.0.0.1:9"})
        (fresh.dir / "state").mkdir()
        shutil.copy(master, fresh.dir / "state" / "master.key")
        restored = fresh.cli("keys", "restore", str(backup), *extra)
        assert f"{keys} keys, 1 policies" in restored
        assert "bob@b.test" in fresh.cli("keys", "list")
        assert "@c.test" in fresh.cli("policy", "list")
        got = opens_through_inbound(fresh, sealed)
        assert got.endswith(MESSAGE) and got.startswith(b"Mailseal-Status: opened")

    # Mistakes: one line, exit 2, nothing written.
    again = cli(fresh, "keys", "restore", str(protected), "--passphrase-file", str(tmp_path / "pw"))
    assert again.returncode == 2 and "exists; restore into a fresh directory, or give --force" in one_line(again)
    (tmp_path / "wrong").write_text("not the right passphrase\n")
    nokey = Daemon(tmp_path / "nokey", inbound={"next_hop": "127.0.0.1:9"})
    for args, fragment in (
            (("restore", str(protected), "--passphrase-file", str(tmp_path / "wrong")), "wrong passphrase"),
            (("restore", str(protected)), "sealed with a passphrase: give --passphrase-file"),
            (("restore", str(plain)), "master key"),
            (("restore", str(master)), "is not a mailseal keystore backup"),
            (("backup", str(tmp_path / "x.bak")), "does not exist")):
        result = cli(nokey, "keys", *args)
        assert result.returncode == 2 and fragment in one_line(result), (args, result.stderr)
    assert not (nokey.dir / "state" / "keystore.sqlite3").exists()
    result = cli(b, "keys", "backup", str(plain))
    assert result.returncode == 2 and "exists; not overwriting it" in one_line(result)

    # Another keystore's master key: refused before anything is written.
    other = Daemon(tmp_path / "other", inbound={"next_hop": "127.0.0.1:9"})
    other.cli("keys", "generate", "@other.test")
    result = cli(other, "keys", "restore", str(protected), "--passphrase-file", str(tmp_path / "pw"), "--force")
    assert result.returncode == 2 and "wrong master key" in one_line(result)
    assert "@other.test" in other.cli("keys", "list")

    # --force replaces a keystore in place.
    shutil.copy(master, tmp_path / "master.copy")
    forced = fresh.cli("keys", "restore", str(plain), "--force")
    assert f"{keys} keys, 1 policies" in forced
