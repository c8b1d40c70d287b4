"""MySQL/MariaDB: the server speaks first, with a handshake (protocol 10) or an error packet."""

from __future__ import annotations

from dataclasses import dataclass

from agent.discovery.probes import banner

MAX_GREETING = banner.MAX_BANNER


@dataclass(frozen=True)
class MysqlGreeting:
    version: str  # "10.11.6-MariaDB-0+deb12u1", or "" when the server answered with an error packet
    error: str = ""  # e.g. "Host '10.0.0.9' is not allowed to connect to this MariaDB server"


def parse_greeting(data: bytes) -> MysqlGreeting | None:
    """Return the greeting when `data` starts with a MySQL handshake or error packet, else None."""
    if len(data) < 5:
        return None
    length = int.from_bytes(data[0:3], "little")
    seq = data[3]
    payload = data[4 : 4 + length]
    if seq != 0 or length < 2 or len(payload) < 2:
        return None
    if payload[0] == 10:
        end = payload.find(b"\0", 1)
        if end <= 1:
            return None
        raw = payload[1:end]
        if not all(0x20 <= b < 0x7F for b in raw):
            return None
        return MysqlGreeting(version=raw.decode("ascii"))
    if payload[0] == 0xFF and len(payload) >= 3:
        code = int.from_bytes(payload[1:3], "little")
        if not 1000 <= code < 5000:
            return None
        message = payload[3:].decode("utf-8", "replace")
        return MysqlGreeting(version="", error=f"{code}: {message}")
    return None


async def probe(host: str, port: int, timeout: float) -> MysqlGreeting | None:
    """Connect, read the greeting (at most MAX_GREETING bytes), and hang up."""
    return parse_greeting(await banner.read(host, port, timeout))
