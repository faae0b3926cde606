"""`mailseal keys …` and `mailseal policy …`: the administrator's key management.

Every failure is a UserError (one line, exit status 2), except a keystore
changed without the master key under `keys audit --verify`, which is a
refusal (exit status 1). Such a keystore refuses every change; the listing
commands still show it, with a warning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from . import age, config as config_mod

if TYPE_CHECKING:
    from .keystore import KeyRecord, SQLiteKeyStore

# The keystore and email-validator are imported by the commands that use
# them: `mailseal seal` and `open` start faster without them.


class UserError(Exception):
    pass


class Refused(Exception):
    pass


def config_path(args: argparse.Namespace) -> Path:
    path = config_mod.find_config(args.config)
    if path is None:
        raise UserError("no configuration file: give -c CONFIG, set $MAILSEAL_CONFIG, or create "
                        "/etc/mailseal/mailseal.toml")
    return path


def load_config(args: argparse.Namespace) -> config_mod.Config:
    path = config_path(args)
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise UserError(str(exc)) from None


def _store(args: argparse.Namespace, create: bool, *, accept: bool = False,
           tampered: type[Exception] = UserError) -> SQLiteKeyStore:
    from .keystore import KeystoreError, Tampered, open_keystore, resolve_master_key

    cfg = load_config(args)
    creating = create and not cfg.keystore.path.exists()
    try:
        store = open_keystore(cfg.keystore, create=create, actor=f"cli:{_user()}", accept=accept)
    except Tampered as exc:
        raise tampered(str(exc)) from None
    except KeystoreError as exc:
        if not create and not cfg.keystore.path.exists():
            raise UserError(f"keystore {cfg.keystore.path} does not exist (check [keystore] path; "
                            "`mailseal keys init` creates it)") from None
        raise UserError(str(exc)) from None
    if creating:  # said out loud: a typo in [keystore] path shows here
        master = resolve_master_key(cfg.keystore.master_key_file, cfg.keystore.passphrase_env)
        print(f"created keystore {cfg.keystore.path} (master key: {master.describe}; back it up separately)")
    return store


def _user() -> str:
    from .keystore.sqlite import default_actor

    return default_actor()


def _owner(text: str) -> str:
    from .addresses import AddressError, parse_owner

    try:
        return parse_owner(text)
    except AddressError as exc:
        raise UserError(str(exc)) from None


def _target(text: str) -> str:
    """A fingerprint as given, or an address/@domain in stored form."""
    from .keystore.fingerprint import looks_like_fingerprint

    return text.strip() if looks_like_fingerprint(text) and "@" not in text else _owner(text)


def _expires(text: str | None) -> int | None:
    if text is None or text == "never":
        return None
    now = int(time.time())
    try:
        when = now + config_mod.parse_duration(text, "--expires")
    except config_mod.ConfigError:
        try:
            import calendar

            when = calendar.timegm(time.strptime(text, "%Y-%m-%d"))
        except ValueError:
            raise UserError(f"--expires: expected a duration (365d) or a date (2027-12-31), got {text!r}") from None
    if when <= now:  # a key born expired would never be used, silently
        raise UserError(f"--expires: {text} is not in the future")
    return when


def _warn_expiry(args: argparse.Namespace, records: list[KeyRecord]) -> None:
    from .keystore.expiry import warnings

    for line in warnings(records, time.time(), load_config(args).keystore.expiry_warning):
        print(f"mailseal: warning: {line}", file=sys.stderr)


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


table = _table  # the quarantine listing uses it too
open_store = _store  # and `explain`


def _run(args: argparse.Namespace, create: bool, action, *, listing: bool = False, accept: bool = False):
    """action(store), on a keystore checked first (keystore.verify): a change is refused
    if it was changed without the master key; listing shows it all the same, with a warning."""
    from .keystore import KeystoreError, Tampered

    with _store(args, create, accept=accept) as store:
        try:
            if not accept:
                try:
                    store.verify(full=False)
                except Tampered as exc:
                    if not listing:
                        raise UserError(f"{exc} (see `mailseal keys audit --verify`)") from None
                    print(f"mailseal: warning: {exc}", file=sys.stderr)
            return action(store)
        except KeystoreError as exc:
            raise UserError(str(exc)) from None


# --- keys ------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    """Create the keystore (and its master key file); an existing one is left as it is."""
    cfg = load_config(args)
    existed = cfg.keystore.path.exists()

    def describe(store):
        store.master()  # an existing keystore must open with the configured master key
        return len(store.list_keys()), len(store.list_policies()) + len(store.list_inbound_policies())

    keys, policies = _run(args, True, describe, listing=True)
    if existed:
        print(f"keystore {cfg.keystore.path} exists already ({keys} keys, {policies} policies); nothing changed")
    else:
        print(f"keystore {cfg.keystore.path} is ready; `mailseal serve` uses it")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    owner = _owner(args.owner)
    expires = _expires(args.expires)
    signing_kind = None if args.signing == "none" else {"hybrid": "ed25519+mldsa65"}.get(args.signing, args.signing)
    records = _run(args, True, lambda s: s.generate_keys(owner, classic=args.classic, signing_kind=signing_kind,
                                                         label=args.label or "", expires=expires))
    for record in records:
        print(f"generated {record.kind} key {record.fingerprint} for {owner}")
    print(f"give its public key to your partners: mailseal keys export {owner}")
    return 0


def _read_import_source(source: str) -> tuple[str, str]:
    """(text, description) of a recipient string, a file, or - for stdin."""
    if source.startswith(("age1", "mailseal-sign-")):
        return source, "imported from the command line"
    if source.upper().startswith("AGE-SECRET-KEY-"):
        raise UserError("that is a private key; import the partner's public key (age1pq1…/age1…)")
    if source == "-":
        return sys.stdin.read(), "imported from standard input"
    try:
        return Path(source).read_text(encoding="utf-8"), f"imported from {source}"
    except FileNotFoundError:
        raise UserError(f"{source}: not a recipient (age1pq1…/age1…) and no such file") from None
    except OSError as exc:
        raise UserError(f"cannot read {source}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{source} is not a text file") from None


def cmd_import(args: argparse.Namespace) -> int:
    from .keystore import KeystoreError, parse_cards

    from .cli_partner_keys import import_certificate, is_certificate_file

    owner = _owner(args.owner)
    expires = _expires(args.expires)
    certificate = is_certificate_file(args.source)
    if certificate is not None:
        return import_certificate(args, owner, certificate, expires)
    if args.ca:
        raise UserError("--ca applies to X.509 certificates only")
    text, where = _read_import_source(args.source)
    try:
        cards = parse_cards(text)
    except KeystoreError as exc:
        raise UserError(str(exc)) from None
    if cards is not None:
        for card in cards:
            if _owner(card.owner) != owner:
                raise UserError(f"the key card is for {card.owner}, not {owner}")
        keys = [(owner, c.recipient, expires if expires is not None else c.expires) for c in cards]
    else:
        from . import signing

        try:
            if signing.looks_like_verify_key(text):
                keys = [(owner, signing.parse_verify_key(text), expires)]
            else:
                keys = [(owner, r, expires) for r in age.parse_recipients(text)]
        except signing.SigningKeyError as exc:
            raise UserError(f"bad signing key: {exc}") from None
        except age.KeyFormatError as exc:
            if where.endswith("command line"):
                raise UserError(f"bad recipient {args.source!r}: {str(exc).removeprefix('line 1: ')}") from None
            raise UserError(f"{where.removeprefix('imported from ')}: {exc}") from None
    records = _run(args, True, lambda s: s.import_many(keys, label=args.label or "", source=where))
    for record in records:
        print(f"imported {record.kind} key {record.fingerprint} for {owner}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .keystore import render_card

    owner = _owner(args.owner)
    from .keystore.records import PARTNER_KINDS

    records = _run(args, False, lambda s: s.export(owner))
    # S/MIME and OpenPGP keys go out as the certificate itself (PEM, armored).
    sys.stdout.write("\n".join(r.recipient if r.kind in PARTNER_KINDS else render_card(r) for r in records))
    return 0


def _as_rows(records: list[KeyRecord]) -> list[list[str]]:
    now = time.time()
    rows = [["OWNER", "SCOPE", "TYPE", "FINGERPRINT", "STATUS", "CREATED", "EXPIRES", "LABEL"]]
    for r in records:
        rows.append([r.owner, r.scope, r.kind, r.fingerprint, r.status(now), _when(r.created),
                     _when(r.expires), r.label])
    return rows


def _listed(args: argparse.Namespace, records: list[KeyRecord]) -> list[KeyRecord]:
    """`keys list ADDRESS`: the keys that serve the address (lookup order);
    `keys list @DOMAIN`: the domain's keys and those of its addresses."""
    from .addresses import AddressError, lookup_order, parse_address

    if not args.owner:
        return records
    owner = _owner(args.owner)
    if owner.startswith("@"):
        return [r for r in records if r.owner == owner or r.owner.endswith(owner)]
    try:
        owners = lookup_order(parse_address(args.owner), load_config(args).keystore.parent_domains)
    except AddressError as exc:
        raise UserError(str(exc)) from None
    return [r for r in records if r.owner in owners]


def cmd_list(args: argparse.Namespace) -> int:
    records = _listed(args, _run(args, False, lambda s: s.list_keys(), listing=True))
    _warn_expiry(args, records)
    if args.json:
        json.dump([r.as_dict() for r in records], sys.stdout, indent=2)
        print()
    elif records:
        print(_table(_as_rows(records)))
    elif args.owner:
        print(f"no keys for {args.owner}")
    else:
        print("no keys (add some with `mailseal keys generate` or `mailseal keys import`)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    target = _target(args.target)
    records = _run(args, False, lambda s: s.find(target), listing=True)
    if not records:
        raise UserError(f"no key matches {args.target}")
    for r in records:
        info = r.as_dict()
        info.pop("id")
        for name in ("created", "expires", "retired", "revoked"):
            info[name] = "-" if info[name] is None else time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                       time.gmtime(info[name]))
        width = max(map(len, info))
        print("\n".join(f"{k + ':':<{width + 1}} {v if v not in (None, '') else '-'}" for k, v in info.items()))
        print()
    return 0


def _ambiguous(records: list[KeyRecord]) -> bool:
    """Several keys of one family (a new and a retired one, two imported
    ones): which to revoke is the administrator's choice. An identity's
    encryption key and the signing key beside it are one choice."""
    from collections import Counter

    from .keystore.records import family

    return any(n > 1 for n in Counter(family(r.kind) for r in records).values())


def _choose(target: str, records: list[KeyRecord]) -> list[str]:
    """Ask on a terminal which keys to revoke; their fingerprints."""
    now = time.time()
    listing = ", ".join(f"{r.fingerprint} ({r.kind}, {r.status(now)})" for r in records)
    if not sys.stdin.isatty():
        raise UserError(f"{target} has {len(records)} unrevoked keys: {listing}; name one by fingerprint, "
                        "or revoke them all with --all")
    print(f"{target} has {len(records)} unrevoked keys:")
    for number, r in enumerate(records, 1):
        print(f"  {number}  {r.fingerprint}  {r.scope} {r.kind}  {r.status(now)}  created {_when(r.created)}")
    answer = input("revoke which (numbers or fingerprints, separated by spaces; 'all'; empty: none)? ").split()
    if answer == ["all"]:
        return [r.fingerprint for r in records]
    chosen = []
    for word in answer:
        if word.isdigit() and 1 <= int(word) <= len(records):
            chosen.append(records[int(word) - 1].fingerprint)
        elif any(r.fingerprint == word.upper() for r in records):
            chosen.append(word.upper())
        else:
            raise UserError(f"{word!r} is none of the keys listed; nothing revoked")
    if not chosen:
        raise UserError("nothing revoked")
    return chosen


def cmd_revoke(args: argparse.Namespace) -> int:
    from .keystore.fingerprint import looks_like_fingerprint

    target = _target(args.target)

    def revoke(store):
        if looks_like_fingerprint(target) and "@" not in target:
            return store.revoke(target, args.reason or "")
        candidates = [r for r in store.find(target) if r.revoked is None]
        if args.all or not _ambiguous(candidates):
            return store.revoke(target, args.reason or "")
        return store.revoke(target, args.reason or "", fingerprints=_choose(target, candidates))

    records = _run(args, False, revoke)
    for r in records:
        print(f"revoked {r.scope} key {r.fingerprint} of {r.owner}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    owner = _owner(args.owner)
    for new, retired in _run(args, False, lambda s: s.rotate_keys(owner)):
        print(f"new {new.kind} key {new.fingerprint} for {owner}; retired (still opens mail): "
              + ", ".join(r.fingerprint for r in retired))
    print(f"give the new public key to your partners: mailseal keys export {owner}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    target = _target(args.target)
    records = _run(args, False, lambda s: s.delete(target))
    for r in records:
        print(f"deleted {r.scope} key {r.fingerprint} of {r.owner}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .keystore import KeystoreError, Tampered

    if args.verify:
        with _store(args, False, tampered=Refused) as store:
            try:
                record = store.verify()
            except Tampered as exc:
                raise Refused(str(exc)) from None
            except KeystoreError as exc:
                raise UserError(str(exc)) from None
        print(f"audit log intact: {record.audit_seq} entries, head {record.audit_head}; "
              f"{record.tallies['keys'].count} keys and {record.tallies['policies'].count} policies "
              "as mailseal left them")
        return 0
    if args.accept:
        problem = _run(args, False, lambda s: s.accept(), accept=True)
        print(f"accepted as it is now, recorded in the audit log: {problem}" if problem else
              "nothing to accept: the keystore verifies")
        return 0
    entries = _run(args, False, lambda s: s.audit_entries(), listing=True)
    if args.json:
        json.dump([e.__dict__ for e in entries], sys.stdout, indent=2)
        print()
        return 0
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at))
        detail = " ".join(f"{k}={v}" for k, v in sorted(e.detail.items()))
        print(f"{e.seq:>5}  {when}  {e.actor:<16} {e.action:<16} {e.subject}  {detail}")
    return 0


# --- policy ------------------------------------------------------------------------

INBOUND_POLICIES = ("signed", "sealed", "any")


def cmd_policy_set(args: argparse.Namespace) -> int:
    owner = _owner(args.owner)
    if args.inbound:
        if args.policy not in INBOUND_POLICIES:
            raise UserError(f"inbound policy must be one of {', '.join(INBOUND_POLICIES)}")
        _run(args, True, lambda s: s.set_inbound_policy(owner, args.policy))
        print(f"inbound policy for mail from {owner}: {args.policy}")
        return 0
    if args.policy not in config_mod.POLICIES:
        raise UserError(f"policy must be one of {', '.join(config_mod.POLICIES)}")
    _run(args, True, lambda s: s.set_policy(owner, args.policy))
    print(f"policy for {owner}: {args.policy}")
    return 0


def cmd_policy_unset(args: argparse.Namespace) -> int:
    owner = _owner(args.owner)
    if args.inbound:
        _run(args, False, lambda s: s.unset_inbound_policy(owner))
        print(f"inbound policy for mail from {owner} removed (any)")
        return 0
    _run(args, False, lambda s: s.unset_policy(owner))
    print(f"policy for {owner} removed (the default applies)")
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    if args.inbound:
        rows = _run(args, False, lambda s: s.list_inbound_policies(), listing=True)
        if args.json:
            json.dump([{"owner": o, "policy": p, "updated": u} for o, p, u in rows], sys.stdout, indent=2)
            print()
        else:
            print(_table([["SENDER", "INBOUND POLICY", "UPDATED"]] + [[o, p, _when(u)] for o, p, u in rows])
                  if rows else "no inbound policies set: mail from every sender is accepted as it comes (any)")
        return 0
    rows = _run(args, False, lambda s: s.list_policies(), listing=True)
    if args.json:
        json.dump([{"owner": o, "policy": p, "updated": u} for o, p, u in rows], sys.stdout, indent=2)
        print()
    elif rows:
        print(_table([["OWNER", "POLICY", "UPDATED"]] + [[o, p, _when(u)] for o, p, u in rows]))
    else:
        print("no policies set: every recipient gets the default policy")
    return 0


def add_commands(commands) -> None:
    keys = commands.add_parser("keys", help="manage keys in the keystore").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True)
    p = keys.add_parser("init", help="create the keystore and its master key (serve never does)")
    p.set_defaults(func=cmd_init)
    p = keys.add_parser("generate", help="new local identity (post-quantum unless --classic)")
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.add_argument("--classic", action="store_true", help="X25519, for partners on older tools")
    p.add_argument("--signing", choices=("hybrid", "ed25519", "none"), default="hybrid",
                   help="signing key beside it: Ed25519 + ML-DSA-65 (default), Ed25519 only, or none")
    p.add_argument("--label", help="free text shown in lists")
    p.add_argument("--expires", metavar="DURATION|DATE", help="e.g. 365d or 2027-12-31 (default: never)")
    p.set_defaults(func=cmd_generate)
    p = keys.add_parser("import", help="a partner's public key, a file of them, or an exported card")
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.add_argument("source", metavar="RECIPIENT|FILE",
                   help="age1pq1…/age1… key, a file (key cards, X.509 or OpenPGP certificate), or - for stdin")
    p.add_argument("--label", help="free text shown in lists")
    p.add_argument("--expires", metavar="DURATION|DATE", help="e.g. 365d or 2027-12-31")
    p.add_argument("--ca", metavar="FILE", help="X.509 only: PEM trust anchors the certificate must chain to")
    p.set_defaults(func=cmd_import)
    from .cli_partner_keys import add_commands as add_partner_commands

    add_partner_commands(keys)
    p = keys.add_parser("export", help="public key card(s) of a local identity")
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.set_defaults(func=cmd_export)
    p = keys.add_parser("list", help="every key, as a table")
    p.add_argument("owner", nargs="?", metavar="ADDRESS|@DOMAIN",
                   help="only the keys that serve this address, or the domain's keys and its addresses'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = keys.add_parser("show", help="details of keys")
    p.add_argument("target", metavar="ADDRESS|@DOMAIN|FINGERPRINT")
    p.set_defaults(func=cmd_show)
    p = keys.add_parser("revoke", help="never seal to a key again")
    p.add_argument("target", metavar="ADDRESS|@DOMAIN|FINGERPRINT")
    p.add_argument("--reason", help="why, for the audit log")
    p.add_argument("--all", action="store_true",
                   help="every unrevoked key of the owner, even when it has several of a kind (new and retired)")
    p.set_defaults(func=cmd_revoke)
    p = keys.add_parser("rotate", help="new local identity; the old one keeps opening mail")
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.set_defaults(func=cmd_rotate)
    p = keys.add_parser("delete", help="remove keys for good")
    p.add_argument("target", metavar="ADDRESS|@DOMAIN|FINGERPRINT")
    p.set_defaults(func=cmd_delete)
    p = keys.add_parser("audit", help="the audit log of every change")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--verify", action="store_true",
                      help="check the keystore against its keyed integrity (exit 1 if changed without the master key)")
    what.add_argument("--accept", action="store_true",
                      help="after reviewing what --verify reports: accept the keystore as it is now")
    what.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_audit)

    from . import cli_backup

    cli_backup.add_commands(keys)

    policy = commands.add_parser("policy", help="sealing policy per address or domain").add_subparsers(
        dest="policy_command", metavar="ACTION", required=True)
    inbound_help = "inbound policy for mail from this sender (signed | sealed | any)"
    p = policy.add_parser("set", help="require | opportunistic | plain; with --inbound: signed | sealed | any")
    p.add_argument("--inbound", action="store_true", help=inbound_help)
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.add_argument("policy", metavar="POLICY")
    p.set_defaults(func=cmd_policy_set)
    p = policy.add_parser("unset", help="back to the default policy")
    p.add_argument("--inbound", action="store_true", help=inbound_help)
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.set_defaults(func=cmd_policy_unset)
    p = policy.add_parser("list", help="every policy set")
    p.add_argument("--inbound", action="store_true", help="the inbound policies")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_policy_list)
