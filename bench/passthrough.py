"""The baseline: a minimal aiosmtpd pass-through proxy, written the obvious way.

Receive with aiosmtpd, forward with smtplib over one reused connection per
client session (in a thread, so sessions run side by side), answer only after
the next hop did. This is what mailseal is measured against.

    python bench/passthrough.py LISTEN_PORT NEXT_HOP_PORT
"""

import asyncio
import smtplib
import sys

from aiosmtpd.smtp import SMTP


class Forwarder:
    def __init__(self, next_port: int) -> None:
        self.next_port = next_port

    def _send(self, session, envelope) -> str:
        client = getattr(session, "relay", None)
        for _attempt in (1, 2):  # a reused connection may have gone stale
            try:
                if client is None:
                    client = session.relay = smtplib.SMTP("127.0.0.1", self.next_port)
                client.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.content)
                return "250 2.0.0 Ok"
            except smtplib.SMTPResponseException as exc:
                return f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
            except (OSError, smtplib.SMTPServerDisconnected):
                client = session.relay = None
        return "451 4.4.1 Next hop unreachable"

    async def handle_DATA(self, server, session, envelope) -> str:
        return await asyncio.to_thread(self._send, session, envelope)


async def main(listen_port: int, next_port: int) -> None:
    handler = Forwarder(next_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=100_000_000, hostname="passthrough"), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    SMTP.line_length_limit = 100_000_000  # accept the same long lines mailseal does
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
