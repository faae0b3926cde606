"""`mailseal keys import` of S/MIME and OpenPGP certificates, and `keys import-secret`.

Partners without mailseal give an X.509 certificate (PEM or DER, with its
chain) or an OpenPGP certificate (armored or binary); our own users' S/MIME
keys come as PKCS#12, their OpenPGP keys as secret keys. Every refusal is
one line (UserError, exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli_keys import UserError, _owner, _run


def read_binary(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except OSError as exc:
        raise UserError(f"cannot read {source}: {exc.strerror}") from None


def is_certificate_file(source: str) -> bytes | None:
    """The file's bytes when it holds an X.509 or OpenPGP certificate, else None."""
    from .partner_keys import looks_like_certificate

    if source == "-" or source.startswith(("age1", "mailseal-sign-", "AGE-SECRET-KEY-")):
        return None
    path = Path(source)
    if not path.is_file():
        return None
    data = read_binary(source)
    if b"PRIVATE KEY" in data[:4096]:
        raise UserError(f"{source} holds a private key: use `mailseal keys import-secret` for our own keys, "
                        "or import the partner's certificate")
    return data if looks_like_certificate(data) else None


def import_certificate(args: argparse.Namespace, owner: str, data: bytes, expires: int | None) -> int:
    from . import partner_keys

    anchors = partner_keys.trust_anchors(read_binary(args.ca)) if getattr(args, "ca", None) else []
    try:
        key = partner_keys.certificate(data, anchors)
    except partner_keys.PartnerKeyError as exc:
        raise UserError(f"{args.source}: {exc}") from None
    if expires is not None and key.expires is not None:
        expires = min(expires, key.expires)  # never past the certificate's own expiry
    record = _run(args, True, lambda s: s.import_partner_key(
        owner, key.kind, key.public, label=args.label or "", source=f"imported from {args.source}",
        expires=expires if expires is not None else key.expires))
    print(f"imported {record.kind} certificate {record.fingerprint} for {owner}")
    return 0


def cmd_import_secret(args: argparse.Namespace) -> int:
    from . import partner_keys

    owner = _owner(args.owner)
    password = None
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise UserError(f"${args.password_env} is not set")
        password = value.encode()
    try:
        key = partner_keys.secret_key(read_binary(args.source), password)
    except partner_keys.PartnerKeyError as exc:
        raise UserError(f"{args.source}: {exc}") from None
    record = _run(args, True, lambda s: s.import_partner_key(
        owner, key.kind, key.public, secret=key.secret, label=args.label or "",
        source=f"imported from {args.source}", expires=key.expires))
    print(f"imported local {record.kind} key {record.fingerprint} for {owner} (sealed at rest)")
    return 0


def add_commands(keys) -> None:
    p = keys.add_parser("import-secret", help="our own S/MIME (PKCS#12) or OpenPGP secret key, to open mail")
    p.add_argument("owner", metavar="ADDRESS|@DOMAIN")
    p.add_argument("source", metavar="FILE", help="a .p12/.pfx file or an OpenPGP secret key, or - for stdin")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the PKCS#12 password")
    p.add_argument("--label", help="free text shown in lists")
    p.set_defaults(func=cmd_import_secret)
