"""mailseal: a mail-encryption gateway built on age v1."""

__version__ = "0.1.0"
