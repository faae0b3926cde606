"""Seal one copy for partners without mailseal, from the certificates the keystore holds.

The keystore keeps S/MIME certificates as PEM and OpenPGP certificates
armored (partner_keys.py); this turns them back into objects, caching the
parsed ones (a partner's certificate is used for every message to it), and
makes the copy. No SMTP and no SQL here.
"""

from __future__ import annotations

from functools import lru_cache

import pysequoia
from cryptography import x509

from . import openpgp, smime
from .policy import OPENPGP, SMIME


@lru_cache(maxsize=1024)
def _x509(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode("ascii"))


@lru_cache(maxsize=1024)
def _openpgp(text: str) -> pysequoia.Cert:
    return pysequoia.Cert.from_bytes(text.encode("ascii"))


def seal(form: str, message: bytes, certificates: tuple[str, ...], *, eol: bytes = b"\r\n") -> bytes:
    """The S/MIME or PGP/MIME copy of message for these stored certificates."""
    if form == SMIME:
        return smime.seal(message, [_x509(t) for t in certificates], eol=eol)
    if form == OPENPGP:
        return openpgp.seal(message, [_openpgp(t) for t in certificates], eol=eol)
    raise ValueError(f"not a partner format: {form}")
