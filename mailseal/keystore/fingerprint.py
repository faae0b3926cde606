"""Short, grouped fingerprints that two people can read to each other."""

import base64
import hashlib
import re

_DOMAIN = b"mailseal fingerprint v1\x00"


def fingerprint(recipient: str) -> str:
    """80 bits of SHA-256 over the recipient string, base32, in groups of four.

    Base32 (A-Z, 2-7) has no 0/O or 1/I/L pairs to confuse on the phone.
    """
    digest = hashlib.sha256(_DOMAIN + recipient.encode("ascii")).digest()[:10]
    text = base64.b32encode(digest).decode()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def looks_like_fingerprint(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z2-7]{4}(-?[A-Za-z2-7]{4}){3}", text.strip()) is not None


def normalise(text: str) -> str:
    flat = text.strip().replace("-", "").upper()
    return "-".join(flat[i : i + 4] for i in range(0, 16, 4))
