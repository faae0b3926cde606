"""The mailseal command line.

Exit status: 0 done; 1 the message was refused (no identity matches, failed
authentication); 2 bad usage or bad input. Every error is one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, age, bundle, cli_help, cli_keys, mime

EXIT_REFUSED = 1
EXIT_USAGE = 2


# A mistake in what the user asked for or gave us: exit status 2.
UserError = cli_keys.UserError
# The input was understood and refused: exit status 1.
Refused = cli_keys.Refused


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file") from None


def _read_stdin() -> bytes:
    if sys.stdin is None or sys.stdin.closed:
        raise UserError("no standard input")
    return sys.stdin.buffer.read()


# --- keygen, seal, open: offline, no configuration needed -------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    if args.signing:
        from . import signing

        key = signing.generate(signing.HYBRID if args.signing == "hybrid" else signing.ED25519)
        public = key.public()
        text = f"# public key: {public}\n{key}\n"
    else:
        identity = age.generate(classic=args.classic)
        text = age.identity_file(identity)
        public = identity.recipient()
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UserError(f"{args.output} exists; not overwriting a key file") from None
        except OSError as exc:
            raise UserError(f"cannot create {args.output}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    if args.output or not sys.stdout.isatty():
        print(f"Public key: {public}", file=sys.stderr)
    return 0


def _recipients(args: argparse.Namespace) -> list[age.Recipient]:
    recipients: list[age.Recipient] = []
    try:
        for text in args.recipient or ():
            recipients.append(age.parse_recipient(text))
        for path in args.recipients_file or ():
            try:
                recipients.extend(age.parse_recipients(_read_text(path, "recipients file")))
            except age.KeyFormatError as exc:
                raise UserError(f"{path}: {exc}") from None
    except age.KeyFormatError as exc:
        raise UserError(f"bad recipient: {exc}") from None
    if not recipients:
        raise UserError("no recipient given: use -r RECIPIENT or -R FILE")
    try:
        age.check_recipients(recipients)
    except age.MixedRecipientsError as exc:
        raise UserError(str(exc)) from None
    return list(dict.fromkeys(recipients))  # the same key twice gets one stanza


def _bound_addresses(args: argparse.Namespace, message: bytes) -> list[str]:
    """The addresses to bind: --to, else those the To and Cc fields name."""
    from .addresses import AddressError, parse_address

    if args.no_bind:
        return []
    texts = args.to
    if not texts:
        from email.utils import getaddresses

        head, _ = mime.split_head(message)
        try:
            found = mime.fields(head)
        except mime.MimeError:
            found = []
        values = [f.value.decode("utf-8", "replace").replace("\r", "").replace("\n", " ")
                  for f in found if f.name.lower() in ("to", "cc")]
        texts = [addr for _, addr in getaddresses(values) if addr]
        if not texts:
            print("mailseal: note: no To, Cc or --to: bound to no recipient, so only `mailseal open` "
                  "opens it (no gateway delivers it)", file=sys.stderr)
    try:
        return [parse_address(text).owner for text in texts]
    except AddressError as exc:
        raise UserError(str(exc)) from None


def _signer(args: argparse.Namespace, message: bytes):
    """(signer, key) from --sign KEYFILE; the signer is --signer, else the From: domain."""
    if not args.sign:
        return None
    from . import authenticity, signing

    text = _read_text(args.sign, "signing key file")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        key = signing.parse_signing_key(lines[0] if lines else "")
    except signing.SigningKeyError as exc:
        raise UserError(f"{args.sign}: {exc}") from None
    try:
        name = args.signer or authenticity.domain_of(authenticity.senders([message])[0])
    except authenticity.UnclearSender:
        name = None
    if not name:
        raise UserError("no --signer and no From: address to take the signer's domain from")
    return name.removeprefix("@").lower(), key


def cmd_seal(args: argparse.Namespace) -> int:
    recipients = _recipients(args)
    message = _read_stdin()
    bundle.write_sealed(message, recipients, sys.stdout.buffer, bind=_bound_addresses(args, message),
                        signer=_signer(args, message))
    sys.stdout.buffer.flush()
    return 0


def _identities(paths: Sequence[str]) -> list[age.Identity]:
    identities: list[age.Identity] = []
    for path in paths:
        try:
            identities.extend(age.parse_identities(_read_text(path, "identity file")))
        except age.KeyFormatError as exc:
            raise UserError(f"{path}: {exc}") from None
    return identities


def cmd_open(args: argparse.Namespace) -> int:
    identities = _identities(args.identity)
    rcpt = None
    if args.rcpt:
        from .addresses import AddressError, parse_address

        try:
            rcpt = parse_address(args.rcpt).owner
        except AddressError as exc:
            raise UserError(str(exc)) from None
    message = _read_stdin()
    try:
        opened = bundle.open_sealed(message, identities, rcpt)
    except bundle.NotBound as exc:
        raise Refused(str(exc)) from None
    except bundle.BundleError as exc:
        raise UserError(str(exc)) from None
    except age.NoIdentityMatch:
        raise Refused("none of the given identities can open this message") from None
    except age.AuthenticationError as exc:
        raise Refused(str(exc)) from None
    verdict = _verify(args, opened)
    out = sys.stdout.buffer
    for chunk in opened.chunks:
        out.write(chunk)
    out.flush()
    if verdict is not None:
        print(f"mailseal: {verdict.status}" + (f" ({verdict.reason})" if verdict.reason else ""), file=sys.stderr)
        if opened.signature is not None and verdict.reason is not None:
            return 1
    return 0


def _verify(args: argparse.Namespace, opened: bundle.Opened):
    """The signature checked with the keys of --verify CARD (None without it)."""
    if not args.verify:
        return None
    from . import authenticity, signing
    from .keystore import KeystoreError, parse_cards

    keys: dict[str, list] = {}
    for path in args.verify:
        try:
            cards = parse_cards(_read_text(path, "key card")) or []
        except KeystoreError as exc:
            raise UserError(f"{path}: {exc}") from None
        for card in cards:
            if isinstance(card.recipient, signing.VerifyKey):
                keys.setdefault(card.owner.removeprefix("@"), []).append(card.recipient)
    if not keys:
        raise UserError("--verify: no signing key in the given card(s)")
    signature = opened.signature
    try:
        senders = authenticity.senders(opened.chunks)
    except authenticity.UnclearSender:
        senders = None
    found = signing.SignerKeys.of(keys.get(signature.signer, []) if signature else [])
    return authenticity.assess(signature, found, senders, None)


# --- check-config --------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and what it points at; list every problem."""
    from pathlib import Path

    from .checkconfig import check

    path = cli_keys.config_path(args)
    postfix_dir = args.postfix_config or os.environ.get("MAILSEAL_POSTFIX_CONFIG") or None
    report = check(path, postfix_dir=Path(postfix_dir) if postfix_dir else None,
                   postfix_asked=postfix_dir is not None)
    for note in report.notes:
        print(f"note: {note}")
    for finding in report.findings:
        print(f"{path}: {'warning: ' if finding.warning else ''}{finding.text}", file=sys.stderr)
    if any(not f.warning or not args.startup for f in report.findings):
        return EXIT_USAGE
    print(f"{path}: configuration OK" + (" (keys about to expire: see above)" if report.findings else ""))
    return 0


# --- serve and quarantine ---------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .gateway import server
    from .gateway.instance import AlreadyRunning
    from .keystore import KeystoreError
    from .replay import CacheUnavailable

    path = cli_keys.config_path(args)
    server.setup_logging()
    try:
        return server.serve(path)
    except (ConfigError, KeystoreError, CacheUnavailable, AlreadyRunning) as exc:
        raise UserError(str(exc)) from None


def _quarantine(args: argparse.Namespace):
    from .quarantine import quarantine_for

    cfg = cli_keys.load_config(args)
    if cfg.inbound is None:
        raise UserError("no [inbound] section in the configuration: there is no quarantine")
    return cfg, quarantine_for(cfg)


def _quarantine_list(quarantine, as_json: bool) -> int:
    from dataclasses import asdict

    entries = quarantine.list()
    if as_json:
        json.dump([{**asdict(e), "client_text": e.client_text} for e in entries], sys.stdout, indent=2)
        print()
        return 0
    if not entries:
        print("quarantine is empty")
        return 0
    rows = [["ID", "RECEIVED (UTC)", "REASON", "FROM", "TO", "SIZE", "CLIENT"]]
    for e in entries:
        rows.append([e.id, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.received)), e.reason,
                     f"<{e.mail_from}>", ",".join(e.rcpts), str(e.size), e.client_text])
    print(cli_keys.table(rows))
    return 0


def _quarantine_purge(quarantine, args: argparse.Namespace) -> int:
    from .config import ConfigError, parse_duration, parse_limit, parse_size

    try:
        if args.max_age is not None:
            quarantine.max_age = parse_limit(args.max_age, "--max-age", parse_duration)
        if args.max_size is not None:
            quarantine.max_size = parse_limit(args.max_size, "--max-size", parse_size)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    removed = quarantine.purge()
    for entry, why in removed:
        print(f"purged {entry.id} ({entry.reason}, {entry.size} bytes): {why}")
    print(f"{len(removed)} purged, {len(quarantine.list())} kept")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from .quarantine import QuarantineError

    cfg, quarantine = _quarantine(args)
    if args.action != "release" and (args.open or args.as_is):
        raise UserError("--open and --as-is go with `quarantine release`")
    if args.action != "list" and args.json:
        raise UserError("--json goes with `quarantine list`")
    if args.action != "purge" and (args.max_age is not None or args.max_size is not None):
        raise UserError("--max-age and --max-size go with `quarantine purge`")
    try:
        if args.action == "list":
            return _quarantine_list(quarantine, args.json)
        if args.action == "purge":
            if args.id:
                raise UserError("quarantine purge takes no ID (`quarantine delete ID` removes one)")
            return _quarantine_purge(quarantine, args)
        if not args.id:
            raise UserError(f"quarantine {args.action} needs an ID (see `mailseal quarantine list`)")
        if args.action == "show":
            entry, message = quarantine.get(args.id)
            sys.stdout.write(f"id: {entry.id}\nreason: {entry.reason}\nfrom: <{entry.mail_from}>\n"
                             f"to: {', '.join(entry.rcpts)}\nclient: {entry.client_text}\nsize: {entry.size}\n\n")
            sys.stdout.flush()
            sys.stdout.buffer.write(message)
            return 0
        with quarantine.held(args.id):
            entry, message = quarantine.get(args.id)
            if args.action == "delete":
                quarantine.remove(entry.id)
                print(f"deleted {entry.id}")
                return 0
            return _release(cfg, quarantine, entry, message, args)
    except QuarantineError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"quarantine {quarantine.dir}: {exc.strerror}") from None


def _release(cfg, quarantine, entry, message: bytes, args: argparse.Namespace) -> int:
    """A sealed message is opened again by default, anything else goes as received."""
    from . import bundle
    from .config import ConfigError
    from .keystore import KeystoreError
    from .release import release
    from .replay import CacheUnavailable

    sealed = bundle.is_sealed(message)
    if args.open and not sealed:
        raise UserError(f"{entry.id} is not a sealed message: release it without --open")
    open_it = sealed and not args.as_is
    try:
        outcome = release(cfg, quarantine, entry, message, open_it=open_it)
    except (ConfigError, KeystoreError, CacheUnavailable) as exc:
        raise UserError(str(exc)) from None
    delivered = [rcpt for rcpt in entry.rcpts if outcome[rcpt].ok]
    failed = {rcpt: reply for rcpt, reply in outcome.items() if not reply.ok}
    how = "opened and delivered" if open_it else "delivered as received"
    if failed:
        rcpt, reply = next(iter(failed.items()))
        also = f"; {how} to {', '.join(delivered)}" if delivered else ""
        # Opening refused (5.6.x/5.7.x) for good: the admin's other choice.
        hint = " (`--as-is` delivers it still sealed)" if open_it and reply.text[:4] in ("5.6.", "5.7.") else ""
        raise Refused(f"{entry.id} not released to {rcpt}: {reply.code} {reply.text.splitlines()[0]}{also}; "
                      f"kept in quarantine{hint}")
    print(f"released {entry.id}: {how} to {', '.join(delivered)}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """What would happen to mail for an address, and why."""
    from dataclasses import asdict

    from . import explain
    from .addresses import AddressError, parse_address
    from .keystore import KeystoreError

    try:
        address = parse_address(args.address)
    except AddressError as exc:
        raise UserError(f"{args.address!r}: {exc}") from None
    cfg = cli_keys.load_config(args)
    with cli_keys.open_store(args, create=False) as store:
        try:
            found = explain.explain(store, address, cfg.outbound, cfg.keystore.parent_domains)
        except KeystoreError as exc:
            raise UserError(str(exc)) from None
    if args.json:
        json.dump(asdict(found), sys.stdout, indent=2)
        print()
    else:
        print(explain.render(found, args.address))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailseal", description="Mail-encryption gateway built on age v1.")
    parser.add_argument("--version", action="version", version=f"mailseal {__version__}")
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="configuration file (default: $MAILSEAL_CONFIG, "
                             "/etc/mailseal/mailseal.toml, ./config/mailseal.toml)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("keygen", help="generate an identity, like age-keygen")
    p.add_argument("--classic", action="store_true", help="X25519 instead of post-quantum hybrid")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600), not stdout")
    p.add_argument("--signing", choices=("hybrid", "ed25519"),
                   help="a signing key (Ed25519 + ML-DSA-65, or Ed25519) instead, for seal --sign")
    p.set_defaults(func=cmd_keygen)

    p = commands.add_parser("seal", help="seal the message on stdin for recipients")
    p.add_argument("-r", "--recipient", action="append", metavar="RECIPIENT",
                   help="age1pq1… or age1… public key (repeatable)")
    p.add_argument("-R", "--recipients-file", action="append", metavar="FILE",
                   help="file of public keys, one a line (repeatable)")
    p.add_argument("--to", action="append", metavar="ADDRESS", default=[],
                   help="an envelope recipient the receiving gateway may open it for (repeatable; "
                        "default: the addresses in To and Cc)")
    p.add_argument("--no-bind", action="store_true",
                   help="bind no recipient: only `mailseal open` can open it, no gateway delivers it")
    p.add_argument("--sign", metavar="KEYFILE", help="sign with this signing key (mailseal keygen --signing)")
    p.add_argument("--signer", metavar="ADDRESS|DOMAIN", help="who signs (default: the From: domain)")
    p.set_defaults(func=cmd_seal)

    p = commands.add_parser("open", help="open the sealed message on stdin")
    p.add_argument("-i", "--identity", action="append", metavar="IDENTITY_FILE", required=True,
                   help="identity file, as keygen writes (repeatable)")
    p.add_argument("--for", dest="rcpt", metavar="ADDRESS",
                   help="refuse (exit 1) unless the message was sealed for this envelope recipient")
    p.add_argument("--verify", action="append", metavar="CARD",
                   help="check the sender signature with the signing keys of this key card (repeatable); "
                        "reported on stderr, exit 1 if the signature is invalid")
    p.set_defaults(func=cmd_open)

    p = commands.add_parser("serve", help="run the listeners named in the configuration")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("quarantine", help="refused inbound mail kept for review")
    p.add_argument("action", choices=("list", "show", "release", "delete", "purge"))
    p.add_argument("id", nargs="?", metavar="ID")
    p.add_argument("--json", action="store_true", help="list: machine-readable output")
    p.add_argument("--max-age", metavar="DURATION",
                   help="purge: remove entries older than this (default: [inbound] quarantine_max_age)")
    p.add_argument("--max-size", metavar="SIZE",
                   help="purge: then the oldest until the rest fit (default: [inbound] quarantine_max_size)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--open", action="store_true",
                     help="release: open the sealed message again (the default for sealed mail)")
    how.add_argument("--as-is", action="store_true",
                     help="release: deliver the message as received, even if sealed")
    p.set_defaults(func=cmd_quarantine)

    p = commands.add_parser("explain", help="what would happen to mail for an address, and why")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_explain)

    p = commands.add_parser("check-config", help="validate the configuration and the keystore")
    p.add_argument("--postfix-config", metavar="DIR",
                   help="Postfix configuration directory to compare sizes with (default: "
                        "$MAILSEAL_POSTFIX_CONFIG, else postconf's own)")
    p.add_argument("--startup", action="store_true",
                   help="keys about to expire are reported but do not fail (the systemd unit's ExecStartPre)")
    p.set_defaults(func=cmd_check_config)

    cli_keys.add_commands(commands)
    _config_option_everywhere(parser)
    cli_help.add_examples(parser)
    return parser


OFFLINE_COMMANDS = ("keygen", "seal", "open")  # no configuration: no -c


def _config_option_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-c CONFIG` after the subcommand too (`mailseal keys list -c FILE`).

    SUPPRESS as default: a subcommand's -c sets args.config only when given,
    so one given before the subcommand is kept."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name in OFFLINE_COMMANDS:
                    continue
                if not any("-c" in a.option_strings for a in sub._actions):
                    sub.add_argument("-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS,
                                     help="configuration file (as before the subcommand)")
                _config_option_everywhere(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"mailseal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"mailseal: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:
        # The reader went away (mailseal open … | head): not our error to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
