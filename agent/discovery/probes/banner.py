"""The one way probes talk to a socket: connect, optionally say something, read a bounded reply, hang up."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

MAX_BANNER = 512


@dataclass(frozen=True)
class Answer:
    data: bytes
    # Why nothing came, when nothing did: "timeout" (silent), "closed" (hung up without a word) or "refused".
    silence: str = ""


async def converse(host: str, port: int, timeout: float, request: bytes = b"", limit: int = MAX_BANNER) -> Answer:
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


async def exchange(host: str, port: int, timeout: float, request: bytes = b"", limit: int = MAX_BANNER) -> bytes:
    """What `converse` got: b"" on timeout, refusal or silence."""
    return (await converse(host, port, timeout, request, limit)).data


async def read(host: str, port: int, timeout: float) -> bytes:
    """What a server-speaks-first protocol (MySQL, SSH) says unprompted."""
    return await exchange(host, port, timeout)


async def read_unbounded(host: str, port: int) -> bytes:
    """What a server says first (at most MAX_BANNER bytes), with no timeout of its own: the caller bounds it.
    b"" when refused, reset or closed. A bare non-blocking socket, without the stream objects and the second
    timer of `read`: the default MySQL health check reads a greeting this way every second (bench/startup: idle
    CPU)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            return await loop.sock_recv(sock, MAX_BANNER)
        except OSError:  # refused, reset, unreachable: no greeting (a timeout is the caller's, and says so)
            return b""


def is_ssh(data: bytes) -> bool:
    return data.startswith(b"SSH-")
