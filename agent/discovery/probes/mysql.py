"""MySQL/MariaDB: the server speaks first, with a handshake (protocol 10) or an error packet.

A bare greeting read followed by a hang-up is a handshake error to the server: MariaDB counts it in its host
cache (performance_schema.host_cache.SUM_CONNECT_ERRORS) and blocks the client's address after
max_connect_errors (100) of them. So nothing here hangs up after the greeting: `login_probe` answers it with a
HandshakeResponse41 for a user that does not exist and empty auth data, and reads the verdict. ERR 1045
(access denied) means the server is up and authenticating; it is counted apart (COUNT_AUTHENTICATION_ERRORS),
never blocks, and costs one "Access denied" line in the error log (log_warnings=2). The same design as
HAProxy's `option mysql-check user ...` (docs/decisions.md, "Do no harm: checks and probes").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from agent.discovery.probes import banner

MAX_GREETING = banner.MAX_BANNER
# The user the login probe names: it shows in the server's "Access denied for user ..." line, so an admin
# reading the log sees whose it is. Should someone create it without a password, the login succeeds and
# the probe quits cleanly: still a live server.
PROBE_USER = "vmesh-agent-probe"
# Capability flags: CLIENT_LONG_PASSWORD (MariaDB reads bit 0 as CLIENT_MYSQL), CLIENT_PROTOCOL_41,
# CLIENT_SECURE_CONNECTION (1-byte length before the auth data), CLIENT_PLUGIN_AUTH (the plugin is named).
_CAPABILITIES = 0x00000001 | 0x00000200 | 0x00008000 | 0x00080000
_MAX_PACKET = 1 << 24
_CHARSET_UTF8 = 33  # utf8_general_ci
_PLUGIN = b"mysql_native_password"
_COM_QUIT = b"\x01\x00\x00\x00\x01"
# Errors that mean the server refuses this host or is full: not alive for its clients.
REFUSING = frozenset({1040, 1129, 1130})
# Auth-switch or more-data rounds answered (with empty data) before the probe gives up on a verdict.
_MAX_ROUNDS = 3


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


def packet(seq: int, payload: bytes) -> bytes:
    """One protocol packet: 3-byte little-endian length, sequence number, payload."""
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def handshake_response(user: str = PROBE_USER) -> bytes:
    """HandshakeResponse41 (sequence 1) for `user` with empty auth data: no password is tried."""
    payload = (_CAPABILITIES.to_bytes(4, "little") + _MAX_PACKET.to_bytes(4, "little")
               + bytes([_CHARSET_UTF8]) + bytes(23) + user.encode() + b"\0" + b"\0" + _PLUGIN + b"\0")
    return packet(1, payload)


@dataclass(frozen=True)
class LoginReply:
    """What the server said after our HandshakeResponse (or an auth-switch answer)."""

    kind: str  # "ok", "error", "switch" (AuthSwitchRequest or AuthMoreData: answer with empty data)
    seq: int
    code: int = 0
    message: str = ""


def parse_login_reply(data: bytes) -> tuple[LoginReply | None, int]:
    """The first whole packet of `data` and the bytes it took, (None, 0) while it is incomplete.

    ValueError for bytes that are no reply of the protocol."""
    if len(data) < 4:
        return None, 0
    length = int.from_bytes(data[0:3], "little")
    if len(data) < 4 + length:
        return None, 0
    seq, payload = data[3], data[4 : 4 + length]
    if not payload:
        raise ValueError("empty packet")
    head = payload[0]
    if head == 0x00:
        return LoginReply("ok", seq), 4 + length
    if head == 0xFF and len(payload) >= 3:
        code = int.from_bytes(payload[1:3], "little")
        message = payload[3:]
        if message.startswith(b"#") and len(message) >= 6:  # SQL state marker and 5 characters
            message = message[6:]
        return LoginReply("error", seq, code, message.decode("utf-8", "replace")), 4 + length
    if head in (0xFE, 0x01):
        return LoginReply("switch", seq), 4 + length
    raise ValueError(f"unexpected packet 0x{head:02x}")


@dataclass(frozen=True)
class LoginVerdict:
    alive: bool  # the server greeted and authenticated (an access-denied answer is alive)
    version: str  # from the greeting, "" when there was none
    detail: str  # "1045: Access denied for user ...", "1129: Host ... is blocked ...", "no greeting", ...


async def login_probe(host: str, port: int) -> LoginVerdict:
    """Greeting, HandshakeResponse for PROBE_USER with empty auth, the verdict, then close (COM_QUIT after an
    OK). No timeout of its own: the caller bounds it. Raises OSError for a connection that fails or drops."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        data = await loop.sock_recv(sock, MAX_GREETING)
        if not data:
            return LoginVerdict(False, "", "no greeting: the connection was closed")
        greeting = parse_greeting(data)
        if greeting is None:
            return LoginVerdict(False, "", "not a MySQL greeting")
        if greeting.error:  # "1040: Too many connections", "1129: Host ... is blocked ..."
            return LoginVerdict(False, "", greeting.error)
        return await _login(loop, sock, greeting.version)


async def _login(loop: asyncio.AbstractEventLoop, sock: socket.socket, version: str) -> LoginVerdict:
    """The login probe on a connection whose greeting (`version`) was read."""
    await loop.sock_sendall(sock, handshake_response())
    buffer = b""
    rounds = 0
    while True:
        try:
            reply, used = parse_login_reply(buffer)
        except ValueError as exc:
            return LoginVerdict(False, version, f"not a MySQL login reply: {exc}")
        if reply is None:
            chunk = await loop.sock_recv(sock, MAX_GREETING)
            if not chunk:
                return LoginVerdict(False, version, "the server closed the connection during login")
            buffer += chunk
            if len(buffer) > 4 * MAX_GREETING:
                return LoginVerdict(False, version, "not a MySQL login reply: too long")
            continue
        buffer = buffer[used:]
        if reply.kind == "ok":  # someone made the probe's user without a password: quit cleanly
            await loop.sock_sendall(sock, _COM_QUIT)
            return LoginVerdict(True, version, "logged in")
        if reply.kind == "error":
            return LoginVerdict(reply.code not in REFUSING, version, f"{reply.code}: {reply.message}")
        rounds += 1
        if rounds > _MAX_ROUNDS:
            return LoginVerdict(False, version, "no verdict after the auth switches")
        await loop.sock_sendall(sock, packet(reply.seq + 1, b""))


async def first_words(host: str, port: int, timeout: float) -> banner.Answer:
    """What a server-speaks-first listener says unprompted (banner.converse's answer); when that is a MySQL
    greeting, the login probe follows before the hang-up, so that the server counts no handshake error."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                               socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, (host, port))
                data = await loop.sock_recv(sock, MAX_GREETING)
                greeting = parse_greeting(data)
                if greeting is not None and greeting.version:
                    with contextlib.suppress(OSError):  # the greeting is what identifies it
                        await _login(loop, sock, greeting.version)
                return banner.Answer(data, "" if data else "closed")
    except TimeoutError:  # before OSError: TimeoutError is one
        return banner.Answer(b"", "timeout")
    except ConnectionRefusedError:
        return banner.Answer(b"", "refused")
    except OSError:  # reset, unreachable
        return banner.Answer(b"", "closed")
