"""How opening S/MIME or OpenPGP mail can fail, kept apart as age's errors are.

A gateway must tell "not for my keys" (try the next key, or refuse as not
ours) from "broken" and from "tampered". The tamper error has one fixed
message whatever failed, as age.AuthenticationError does.
"""


class PartnerFormatError(Exception):
    """Base class of every S/MIME and OpenPGP failure."""


class NotThisFormat(PartnerFormatError):
    """The message is not S/MIME enveloped-data (or not PGP/MIME) at all."""


class MalformedMessage(PartnerFormatError):
    """It claims the format but is broken: bad MIME, bad base64, bad DER or packets."""


class NoKeyMatch(PartnerFormatError):
    """The message is not encrypted to any of these keys."""

    def __init__(self, message: str = "the message is not encrypted to this key") -> None:
        super().__init__(message)


class Tampered(PartnerFormatError):
    """The ciphertext failed its integrity check (or its padding, for CBC)."""

    MESSAGE = "message failed authentication (tampered, truncated or corrupted)"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.MESSAGE)


class UnsupportedKey(PartnerFormatError, ValueError):
    """A certificate or key mailseal cannot encrypt to or open with (the message says why)."""
