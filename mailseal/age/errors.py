"""The ways opening an age file can fail, kept apart on purpose.

Callers must be able to tell "this stanza is not for my key, try the next
identity" from "the file is malformed" and from "the file was tampered with".
The tamper error carries one fixed message: an attacker who feeds us modified
files learns nothing from it beyond "refused".
"""


class AgeError(Exception):
    """Base class of every age failure."""


class HeaderError(AgeError):
    """The header (or a stanza addressed to our key type) is malformed."""


class NoIdentityMatch(AgeError):
    """No identity could unwrap any stanza: the file is not for these keys."""

    def __init__(self, message: str = "no identity matched any of the recipients") -> None:
        super().__init__(message)


class AuthenticationError(AgeError):
    """The header MAC or the payload failed authentication.

    Deliberately opaque: the same message whatever failed and wherever.
    """

    MESSAGE = "message failed authentication (tampered, truncated or corrupted)"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.MESSAGE)


class KeyFormatError(AgeError):
    """A key string or identity file could not be parsed."""


class MixedRecipientsError(AgeError, ValueError):
    """Post-quantum and classic recipients were asked for in one file."""

    def __init__(self) -> None:
        super().__init__(
            "post-quantum (age1pq1…) and classic (age1…) recipients cannot share one "
            "message: the classic key would undo the post-quantum protection"
        )
