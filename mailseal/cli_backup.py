"""`mailseal keys backup FILE` and `mailseal keys restore FILE`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import cli_keys
from .cli_keys import UserError

MIN_PASSPHRASE = 12


def _passphrase(args: argparse.Namespace) -> str | None:
    if not args.passphrase_file:
        return None
    try:
        text = Path(args.passphrase_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read passphrase file {args.passphrase_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"passphrase file {args.passphrase_file} is not a text file") from None
    lines = text.splitlines()
    passphrase = lines[0] if lines else ""
    if len(passphrase) < MIN_PASSPHRASE:
        raise UserError(f"the passphrase (first line of {args.passphrase_file}) must have at least "
                        f"{MIN_PASSPHRASE} characters")
    return passphrase


def cmd_backup(args: argparse.Namespace) -> int:
    from .keystore import KeystoreError, resolve_master_key
    from .keystore import backup

    cfg = cli_keys.load_config(args)
    source = resolve_master_key(cfg.keystore.master_key_file, cfg.keystore.passphrase_env).describe
    passphrase = _passphrase(args)
    with cli_keys.open_store(args, create=False) as store:
        try:
            summary = backup.write(Path(args.file), store.path, store.master(), passphrase)
        except KeystoreError as exc:
            raise UserError(str(exc)) from None
    how = "a passphrase (first line of " + args.passphrase_file + ")" if passphrase else f"the master key ({source})"
    print(f"backup of {summary.source} written to {args.file}: {summary.keys} keys, {summary.policies} policies, "
          f"sealed with {how}")
    print(f"the master key is not in it: the private keys inside open only with {source}; keep a copy of "
          "that key apart from this backup (docs/OPERATIONS.md, Backup)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .keystore import KeystoreError, resolve_master_key
    from .keystore import backup

    cfg = cli_keys.load_config(args)
    passphrase = _passphrase(args)
    source = resolve_master_key(cfg.keystore.master_key_file, cfg.keystore.passphrase_env)
    if cfg.keystore.path.exists() and not args.force:
        raise UserError(f"keystore {cfg.keystore.path} exists; restore into a fresh directory, or give --force "
                        "to replace it")
    try:
        image, summary = backup.read(Path(args.file), source, passphrase)
        backup.install(image, cfg.keystore.path, force=args.force)
    except KeystoreError as exc:
        raise UserError(str(exc)) from None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(summary.created))
    # An older copy on purpose: recorded, and the head file follows it (docs/OPERATIONS.md, Integrity).
    with cli_keys.open_store(args, create=False) as store:
        try:
            store.restored({"backup": str(args.file), "taken": summary.created})
        except KeystoreError as exc:
            raise UserError(str(exc)) from None
    print(f"restored {cfg.keystore.path} from {args.file} (backup of {summary.source} taken {when}): "
          f"{summary.keys} keys, {summary.policies} policies; they open with {source.describe}")
    return 0


def add_commands(keys) -> None:
    p = keys.add_parser("backup", help="a consistent, sealed copy of the keystore (not the master key)")
    p.add_argument("file", metavar="FILE", help="new file to write (mode 0600; never overwritten)")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help="seal with the passphrase on the first line of FILE instead of the master key")
    p.set_defaults(func=cmd_backup)
    p = keys.add_parser("restore", help="the keystore from a backup (the master key must be in place)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--passphrase-file", metavar="FILE", help="the backup was sealed with this passphrase")
    p.add_argument("--force", action="store_true", help="replace an existing keystore")
    p.set_defaults(func=cmd_restore)
