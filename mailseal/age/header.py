"""The age v1 header: version line, recipient stanzas, MAC line.

Parsing is strict, as the specification demands: every line ends in LF (a CR
is an error), stanza bodies are canonical unpadded base64 wrapped at exactly
64 columns and end with a shorter line, arguments are non-empty runs of
visible ASCII. Anything else raises HeaderError.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import b64
from .errors import AuthenticationError, HeaderError

VERSION_LINE = b"age-encryption.org/v1\n"
MAC_PREFIX = b"---"
COLUMNS = 64
MAX_HEADER_SIZE = 1 << 20  # a header this large is an attack, not a mail


@dataclass(frozen=True)
class Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        line = b"-> " + " ".join((self.type, *self.args)).encode("ascii") + b"\n"
        text = b64.encode(self.body)
        lines = [text[i : i + COLUMNS] for i in range(0, len(text), COLUMNS)]
        if len(text) % COLUMNS == 0:
            lines.append(b"")  # the body must end with a line shorter than 64
        return line + b"\n".join(lines) + b"\n"


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    # The exact bytes the MAC covers (up to and including "---"), as read.
    mac_input: bytes

    @property
    def size(self) -> int:
        """Length of the encoded header: MAC input, space, MAC, LF."""
        return len(self.mac_input) + 1 + len(b64.encode(self.mac)) + 1

    def verify_mac(self, file_key: bytes) -> None:
        if not hmac.compare_digest(compute_mac(file_key, self.mac_input), self.mac):
            raise AuthenticationError()


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def compute_mac(file_key: bytes, mac_input: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, b"", b"header"), mac_input, hashlib.sha256).digest()


def encode_header(stanzas: list[Stanza], file_key: bytes) -> bytes:
    mac_input = VERSION_LINE + b"".join(s.encode() for s in stanzas) + MAC_PREFIX
    return mac_input + b" " + b64.encode(compute_mac(file_key, mac_input)) + b"\n"


_VISIBLE = bytes(range(33, 127))


def _is_argument(arg: bytes) -> bool:
    return bool(arg) and not arg.translate(None, _VISIBLE)


def parse_header(data: bytes) -> Header:
    """Parse the header at the start of data; Header.size says where it ends."""
    pos = 0

    def next_line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos, MAX_HEADER_SIZE)
        if end < 0:
            if len(data) >= MAX_HEADER_SIZE:
                raise HeaderError("header is too large")
            raise HeaderError("header is truncated (no line feed)")
        line = data[pos:end]
        pos = end + 1
        return line

    if not data.startswith(VERSION_LINE):
        if data.startswith(b"age-encryption.org/"):
            raise HeaderError("unsupported age version")
        raise HeaderError("not an age v1 file (bad version line)")
    pos = len(VERSION_LINE)
    stanzas: list[Stanza] = []
    while True:
        start = pos
        line = next_line()
        if line.startswith(b"--- ") or line == MAC_PREFIX:
            if not stanzas:
                raise HeaderError("header has no recipient stanza")
            mac_text = line[4:]
            if len(mac_text) != 43:
                raise HeaderError("malformed header MAC")
            try:
                mac = b64.decode(mac_text)
            except ValueError:
                raise HeaderError("malformed header MAC") from None
            return Header(tuple(stanzas), mac, data[: start + 3])
        if not line.startswith(b"-> "):
            raise HeaderError("malformed header line")
        parts = line[3:].split(b" ")
        if not all(_is_argument(p) for p in parts):
            raise HeaderError("malformed stanza arguments")
        body_lines = []
        while True:
            body_line = next_line()
            if len(body_line) > COLUMNS:
                raise HeaderError("stanza body line too long")
            body_lines.append(body_line)
            if len(body_line) < COLUMNS:
                break
        try:
            body = b64.decode(b"".join(body_lines))
        except ValueError:
            raise HeaderError("malformed stanza body") from None
        names = [p.decode("ascii") for p in parts]
        stanzas.append(Stanza(names[0], tuple(names[1:]), body))
