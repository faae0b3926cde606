"""A load driver for messages that must differ: like smtp-source -d -s N
(N sessions, one transaction after another on each, no pipelining), but each
transaction takes its own envelope recipient and message from a job file.

Opening needs this: every sealed bundle is bound to its envelope recipient
and has its own serial, so the same file cannot be sent to a new recipient
each time (smtp-source -N) as sealing can. bench/gateway.py drives both
seal-N and open with it, so their ratio stays like for like.

    python bench/drive.py PORT SESSIONS JOBFILE

JOBFILE: records of (4-byte recipient length, recipient, 8-byte message
length, message), the message with CRLF line ends. Prints the seconds taken;
exits 1 on any reply but the expected one.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time


def read_jobs(path: str) -> list[tuple[bytes, bytes]]:
    data = memoryview(open(path, "rb").read())
    jobs, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        rcpt = bytes(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
        (m,) = struct.unpack_from(">Q", data, pos)
        message = bytes(data[pos + 8 : pos + 8 + m])
        pos += 8 + m
        stuffed = message.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        jobs.append((rcpt, stuffed + b".\r\n"))
    return jobs


def write_jobs(path, jobs) -> None:
    with open(path, "wb") as out:
        for rcpt, message in jobs:
            rcpt = rcpt.encode()
            out.write(struct.pack(">I", len(rcpt)) + rcpt + struct.pack(">Q", len(message)))
            out.write(message)


async def reply(reader: asyncio.StreamReader, expect: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(expect):
            raise SystemExit(f"drive: expected {expect.decode()}, got {line[:200]!r}")
        if line[3:4] != b"-":
            return


async def session(port: int, jobs: list[tuple[bytes, bytes]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    await reply(reader, b"220")
    writer.write(b"EHLO client.a.test\r\n")
    await reply(reader, b"250")
    for rcpt, data in jobs:
        writer.write(b"MAIL FROM:<alice@a.test>\r\n")
        await reply(reader, b"250")
        writer.write(b"RCPT TO:<" + rcpt + b">\r\n")
        await reply(reader, b"250")
        writer.write(b"DATA\r\n")
        await reply(reader, b"354")
        writer.write(data)
        await writer.drain()
        await reply(reader, b"250")
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def main(port: int, sessions: int, jobs: list[tuple[bytes, bytes]]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(session(port, jobs[i::sessions]) for i in range(sessions)))
    return time.perf_counter() - start


if __name__ == "__main__":
    port, sessions, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    print(f"{asyncio.run(main(port, sessions, read_jobs(path))):.6f}")
