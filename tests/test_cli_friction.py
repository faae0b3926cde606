"""What got in an administrator's way (issue 11, item 12): `-c` after the
subcommand, `keys list` for one address or domain, `keys revoke` of an owner
with several keys."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from mailseal import age

from .conftest import ROOT, run_cli
from .harness import Daemon


def ok(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_config_option_after_the_subcommand(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"MAILSEAL_CONFIG": ""}
    assert "generated" in ok(run_cli("keys", "generate", "bob@b.test", "-c", str(d.config), cwd=elsewhere, env=env))
    assert "bob@b.test" in ok(run_cli("keys", "list", "--config", str(d.config), cwd=elsewhere, env=env))
    assert "@b.test: require" in ok(run_cli("policy", "set", "@b.test", "require", "-c", str(d.config),
                                            cwd=elsewhere, env=env))
    assert "configuration OK" in ok(run_cli("check-config", "-c", str(d.config), cwd=elsewhere, env=env))
    # Before the subcommand, as always; after it wins when both are given.
    assert "bob@b.test" in ok(run_cli("-c", "/nonexistent.toml", "keys", "list", "-c", str(d.config)))


def test_keys_list_for_an_address_or_a_domain(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={})
    for owner in ("bob@b.test", "carol@b.test", "@b.test", "dave@d.test"):
        d.cli("keys", "import", owner, str(age.generate().recipient()))

    def owners(*args):
        rows = d.cli("keys", "list", *args).splitlines()[1:]
        return sorted(row.split()[0] for row in rows)

    assert owners() == ["@b.test", "bob@b.test", "carol@b.test", "dave@d.test"]
    # An address: the keys that serve it, in lookup order (its own, its domain's).
    assert owners("Bob+lists@B.test") == ["@b.test", "bob@b.test"]
    assert owners("eve@b.test") == ["@b.test"]
    # A domain: the domain's key and its addresses'.
    assert owners("@B.TEST") == ["@b.test", "bob@b.test", "carol@b.test"]
    assert d.cli("keys", "list", "@e.test").strip() == "no keys for @e.test"
    bad = run_cli("-c", str(d.config), "keys", "list", "not an address")
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1


def _unrevoked(d, owner):
    import json

    return sorted(r["fingerprint"] for r in json.loads(d.cli("keys", "list", owner, "--json"))
                  if r["owner"] == owner and r["revoked"] is None)


def test_revoke_of_an_owner_with_a_new_and_a_retired_key_asks_which(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={})
    d.cli("keys", "generate", "bob@b.test")
    d.cli("keys", "rotate", "bob@b.test")
    before = _unrevoked(d, "bob@b.test")
    assert len(before) == 4  # new and retired: each an encryption and a signing key
    result = run_cli("-c", str(d.config), "keys", "revoke", "bob@b.test")
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1, err
    assert "bob@b.test has 4 unrevoked keys" in err and "--all" in err
    assert all(fp in err for fp in before)
    assert _unrevoked(d, "bob@b.test") == before  # nothing revoked
    # One by fingerprint, then the rest with --all.
    assert f"revoked local key {before[0]}" in d.cli("keys", "revoke", before[0])
    assert _unrevoked(d, "bob@b.test") == before[1:]
    out = d.cli("keys", "revoke", "bob@b.test", "--all")
    assert out.count("revoked local key") == 3 and _unrevoked(d, "bob@b.test") == []


def test_revoke_of_one_identity_needs_no_choice(tmp_path):
    """An encryption key and the signing key beside it are one identity."""
    d = Daemon(tmp_path / "gw", outbound={})
    d.cli("keys", "generate", "bob@b.test")
    assert d.cli("keys", "revoke", "bob@b.test").count("revoked local key") == 2


def test_revoke_asks_on_a_terminal(tmp_path):
    d = Daemon(tmp_path / "gw", outbound={})
    d.cli("keys", "import", "carol@c.test", str(age.generate().recipient()))
    d.cli("keys", "import", "carol@c.test", str(age.generate().recipient()))
    keys = _unrevoked(d, "carol@c.test")
    main, tty = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mailseal", "-c", str(d.config), "keys", "revoke", "carol@c.test"],
                            stdin=tty, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(tty)
    os.write(main, b"2\n")
    out, err = proc.communicate(timeout=60)
    os.close(main)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "carol@c.test has 2 unrevoked keys" in text and "revoke which" in text
    listed = [line.split()[1] for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert f"revoked remote key {listed[1]} of carol@c.test" in text
    assert _unrevoked(d, "carol@c.test") == [listed[0]] and sorted(listed) == keys
