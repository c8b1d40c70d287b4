"""The one way probes talk to a socket: connect, optionally say something, read a bounded reply, hang up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

MAX_BANNER = 512


@dataclass(frozen=True)
class Answer:
    data: bytes
    # Why nothing came, when nothing did: "timeout" (silent), "closed" (hung up without a word) or "refused".
    silence: str = ""


async def converse(host: str, port: int, timeout: float, request: bytes = b"",
                   limit: int = MAX_BANNER) -> Answer:
    """Send `request` (nothing for server-speaks-first protocols) and return at most `limit` bytes of the
    reply, or why there was none. Never raises."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if request:
                    writer.write(request)
                    await writer.drain()
                data = await reader.read(limit)
                return Answer(data, "" if data else "closed")
            finally:
                writer.close()
    except TimeoutError:  # before OSError: TimeoutError is one
        return Answer(b"", "timeout")
    except ConnectionRefusedError:
        return Answer(b"", "refused")
    except OSError:  # reset, unreachable
        return Answer(b"", "closed")


def is_ssh(data: bytes) -> bool:
    return data.startswith(b"SSH-")
