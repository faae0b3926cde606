"""Every reply the gateway gives, named, with its enhanced status code (RFC 3463)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # starts with the enhanced status code

    def __str__(self) -> str:
        lines = self.text.splitlines() or [""]
        return "\r\n".join(f"{self.code}{'-' if i < len(lines) - 1 else ' '}{line}"
                           for i, line in enumerate(lines))

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


def ok(text: str) -> Reply:
    return Reply(250, f"2.0.0 {text}")


# The SMTP edge
CLIENT_NOT_ALLOWED = Reply(554, "5.7.1 Client host rejected: not in allowed_clients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4 Message size exceeds the fixed maximum message size")
BAD_SIZE = Reply(501, "5.5.4 Syntax error in SIZE parameter")
XFORWARD_OK = Reply(250, "2.0.0 Ok")
XFORWARD_BAD = Reply(501, "5.5.4 Bad XFORWARD attribute")
BAD_ADDRESS = Reply(553, "5.1.3 Invalid recipient address")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7 Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3 Bad recipient address syntax")
EIGHT_BIT_ADDRESS = Reply(553, "5.6.7 Non-ASCII address without SMTPUTF8")
INTERNAL_ERROR = Reply(451, "4.3.0 Internal error, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2 Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2 Timeout exceeded, closing the connection")
TOO_MANY_FROM_CLIENT = Reply(421, "4.7.0 Too many connections from your address, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.3.2 Too many connections, try again later")
VRFY_DISABLED = Reply(502, "5.5.1 VRFY command is disabled")
STARTTLS_NOT_OFFERED = Reply(502, "5.5.1 STARTTLS not offered")

# Outbound (sealing)
POLICY_REQUIRES_KEY = "5.7.1 <{rcpt}>: policy requires encryption and no usable key is known for this recipient"
POLICY_CERTIFICATE_EXPIRED = ("5.7.1 <{rcpt}>: policy requires encryption and the recipient's certificate "
                              "has expired")
DECISION_CHANGED = Reply(451, "4.7.0 Encryption decision changed since RCPT (key or policy changed); try again")
PARTIAL_FAILURE = Reply(451, "4.3.0 Not every copy could be delivered; try again")
SEAL_FAILED = Reply(451, "4.7.5 Sealing failed; the message was not sent; try again later")
KEYSTORE_UNAVAILABLE = Reply(451, "4.3.0 Keystore unavailable, try again later")

# Inbound (opening)
TAMPERED = Reply(550, "5.7.5 Sealed message failed authentication (tampered or corrupted)")
NO_IDENTITY = Reply(550, "5.7.5 No local key opens this sealed message")
NOT_BOUND = Reply(550, "5.7.1 Sealed message was not sealed for this recipient")
UNBOUND_VERSION = Reply(550, "5.7.0 Version 1 sealed messages (without recipient binding) are not accepted")
MALFORMED = Reply(550, "5.6.0 Malformed sealed message")
# Sender authenticity (mailseal.authenticity): RFC 7372's 5.7.x family.
SIGNATURE_INVALID = Reply(550, "5.7.7 Sender signature invalid or not the sender's")
NOT_SIGNED = Reply(550, "5.7.1 Mail from this sender must be sealed and signed by it")
NOT_SEALED = Reply(550, "5.7.1 Mail from this sender must arrive sealed")
SENDER_UNCLEAR = Reply(550, "5.7.1 Sender unclear: the message needs exactly one From: field that names "
                            "its mailboxes plainly")
REPLAYED = Reply(550, "5.7.0 Replayed sealed message refused (already delivered)")
TOO_OLD = Reply(550, "5.7.0 Sealed message is older than the replay window")
FROM_THE_FUTURE = Reply(451, "4.7.0 Sealed message is dated in the future (clock skew?), try again later")
REPLAY_IN_FLIGHT = Reply(451, "4.7.0 The same sealed message is being delivered right now, try again later")
CLOCK_WENT_BACK = Reply(451, "4.7.0 Local clock is behind the replay cache, try again later")
REPLAY_CACHE_DOWN = Reply(451, "4.3.0 Replay cache unavailable, try again later")

# The next hop
NEXT_HOP_UNREACHABLE = Reply(451, "4.4.1 Next hop unreachable, try again later")
NEXT_HOP_TIMEOUT = Reply(451, "4.4.2 Next hop timed out, try again later")
NEXT_HOP_PROTOCOL = Reply(451, "4.5.0 Next hop answered out of protocol, try again later")
NEXT_HOP_BUSY = Reply(451, "4.4.5 All connections to the next hop stayed busy, try again later")
NEXT_HOP_TLS_INJECTION = Reply(451, "4.7.0 Next hop sent data before the TLS handshake (reply injection?), "
                                    "try again later")
LOCAL_DELIVERY_FAILED = Reply(451, "4.3.0 Local delivery failed, try again later")
