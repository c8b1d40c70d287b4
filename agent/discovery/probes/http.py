"""HTTP/1.x: the client speaks first; any server answers a plain GET with a status line."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RESPONSE = 512
REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: vmesh-agent-probe\r\n\r\n"
# "HTTP/1.1 200 OK": the reason phrase may be empty or missing altogether ("HTTP/1.1 200").
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [\x20-\x7e\x80-\xff\t]*)?\r?\n")
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\x80-\xff\t]*?)[ \t]*\r?\n")


@dataclass(frozen=True)
class HttpReply:
    status: int
    server: str = ""  # the Server header, when it came within the bytes read


def parse_response(data: bytes) -> HttpReply | None:
    """Return the status (and Server header) when `data` starts with an HTTP/1.x response, else None."""
    status = STATUS_LINE.match(data)
    if status is None:
        return None
    server = ""
    pos = status.end()
    # Only complete header lines count; the header block may be cut by our bounded read.
    while header := HEADER_LINE.match(data, pos):
        if header.group(1).lower() == b"server":
            server = header.group(2).decode("latin-1")
            break
        pos = header.end()
    return HttpReply(status=int(status.group(1)), server=server)
