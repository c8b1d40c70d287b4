"""Redis: the client speaks first; an inline PING is answered with +PONG, or an error naming why not."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_REPLY = 256
PING = b"PING\r\n"
# Error prefixes a Redis server can answer PING with before any command of ours has run: ERR (e.g. max
# clients), NOAUTH (requirepass), DENIED (protected mode), LOADING, BUSY (a script), MASTERDOWN, NOPERM (ACL).
ERROR_PREFIXES = ("ERR", "NOAUTH", "DENIED", "LOADING", "BUSY", "MASTERDOWN", "NOPERM")
# One RESP error line; the CRLF may be missing when our bounded read cut a long message (protected mode's).
ERROR_LINE = re.compile(rb"-([A-Z]+)( [\x20-\x7e]*)?(\r\n)?")


@dataclass(frozen=True)
class RedisReply:
    error: str = ""  # "" for +PONG, else e.g. "NOAUTH Authentication required."

    @property
    def pong(self) -> bool:
        return not self.error


def parse_ping_reply(data: bytes) -> RedisReply | None:
    """Return the reply when `data` is a Redis server's answer to PING, else None."""
    if data == b"+PONG\r\n":
        return RedisReply()
    match = ERROR_LINE.fullmatch(data)
    if match is None or match.group(1).decode("ascii") not in ERROR_PREFIXES:
        return None
    if match.group(3) is None and len(data) < MAX_REPLY:
        return None  # an unterminated line is only believable when it filled our read
    return RedisReply(error=data[1:].rstrip(b"\r\n").decode("ascii"))
