"""Server-speaks-first protocols: connect, read what the server says unprompted (bounded), hang up."""

from __future__ import annotations

import asyncio

MAX_BANNER = 512


async def read(host: str, port: int, timeout: float) -> bytes:
    """The first bytes the server sends, or b"" on timeout, refusal or silence. Never raises."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await reader.read(MAX_BANNER)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return b""


def is_ssh(data: bytes) -> bool:
    return data.startswith(b"SSH-")
