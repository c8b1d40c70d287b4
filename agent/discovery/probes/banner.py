"""The one way probes talk to a socket: connect, optionally say something, read a bounded reply, hang up."""

from __future__ import annotations

import asyncio

MAX_BANNER = 512


async def exchange(host: str, port: int, timeout: float, request: bytes = b"", limit: int = MAX_BANNER) -> bytes:
    """Send `request` (nothing for server-speaks-first protocols) and return at most `limit` bytes of the
    reply, or b"" on timeout, refusal or silence. Never raises."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if request:
                    writer.write(request)
                    await writer.drain()
                return await reader.read(limit)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return b""


async def read(host: str, port: int, timeout: float) -> bytes:
    """What a server-speaks-first protocol (MySQL, SSH) says unprompted."""
    return await exchange(host, port, timeout)


def is_ssh(data: bytes) -> bool:
    return data.startswith(b"SSH-")
