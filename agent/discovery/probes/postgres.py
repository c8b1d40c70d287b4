"""PostgreSQL: the client speaks first; an SSLRequest is answered before any authentication."""

from __future__ import annotations

from dataclasses import dataclass

MAX_ANSWER = 512
# int32 length 8, int32 code 80877103 (1234.5679), big-endian: asks the server whether it speaks TLS.
SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
# An ErrorResponse this early is a few hundred bytes; a "length" beyond this is some other protocol.
MAX_ERROR_LENGTH = 8192
ERROR_FIELD_TYPES = frozenset(b"SVCMDHPpqWstcdnFLR")


@dataclass(frozen=True)
class PostgresAnswer:
    ssl: bool  # True when the server offered TLS ("S")
    error: str = ""  # e.g. "0A000: unsupported frontend protocol ...", when the server answered with an error


def parse_ssl_response(data: bytes) -> PostgresAnswer | None:
    """Return the answer when `data` is a PostgreSQL server's reply to an SSLRequest, else None."""
    # One byte alone is weak evidence, so it must be the whole reply: the server then waits for the client.
    if data == b"S":
        return PostgresAnswer(ssl=True)
    if data == b"N":
        return PostgresAnswer(ssl=False)
    if data[:1] != b"E":
        return None
    return _error_v3(data) or _error_v2(data)


def _error_v3(data: bytes) -> PostgresAnswer | None:
    """An ErrorResponse: 'E', int32 length, then (field type, NUL-terminated text) pairs and a final NUL."""
    if len(data) < 5:
        return None
    length = int.from_bytes(data[1:5], "big")
    if not 4 < length <= MAX_ERROR_LENGTH or len(data) > 1 + length:
        return None
    declared = length - 4
    body = data[5:]
    fields: dict[str, str] = {}
    pos = 0
    while True:
        if pos == len(body):
            if len(body) == declared:
                return None  # no terminating NUL
            break  # our bounded read cut the message at a field boundary
        if body[pos] == 0:
            if pos != declared - 1:
                return None  # the terminating NUL must be the message's last byte
            break
        if body[pos] not in ERROR_FIELD_TYPES:
            return None
        end = body.find(b"\0", pos + 1)
        if end < 0:
            if len(body) == declared:
                return None
            break  # the last field was cut by the read bound; the ones before are enough
        fields[chr(body[pos])] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    if "M" not in fields or not ("S" in fields or "V" in fields or "C" in fields):
        return None
    code = fields.get("C", "")
    message = fields["M"]
    return PostgresAnswer(ssl=False, error=f"{code}: {message}" if code else message)


def _error_v2(data: bytes) -> PostgresAnswer | None:
    """The old unframed error ('E', text, newline, NUL) that PostgreSQL still sends when it cannot fork."""
    if not data.endswith(b"\n\0") or len(data) < 4:
        return None
    text = data[1:-2]
    if not all(0x20 <= b < 0x7F or b >= 0x80 for b in text):
        return None
    return PostgresAnswer(ssl=False, error=text.decode("utf-8", "replace"))
