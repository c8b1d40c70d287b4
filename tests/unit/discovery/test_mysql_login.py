"""The MySQL login probe's encoder and reply parser on literal bytes, and its whole exchange against a scripted
server on loopback (the real MariaDB's answers are in tests/integration/test_check_do_no_harm.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agent.discovery.probes.mysql import (
    LoginReply,
    LoginVerdict,
    first_words,
    handshake_response,
    login_probe,
    packet,
    parse_login_reply,
)
from tests.unit.discovery.test_probes import MARIADB_GREETING

# What the probe sends: HandshakeResponse41, sequence 1; capabilities LONG_PASSWORD|PROTOCOL_41|
# SECURE_CONNECTION|PLUGIN_AUTH, max packet 16 MiB, utf8_general_ci, 23 zero bytes, the user, empty auth data,
# the plugin name.
HANDSHAKE_RESPONSE = bytes.fromhex(
    "490000010182080000000001210000000000000000000000000000000000000000000000766d6573682d6167656e742d70726f6265"
    "00006d7973716c5f6e61746976655f70617373776f726400"
)
# Debian 12's MariaDB 10.11.19 (name resolution on) answering it, captured.
ACCESS_DENIED = (b">\x00\x00\x02\xff\xa2\x06#28000Access denied for user 'vmesh-agent-probe'@'vmeas-vm'")
# An AuthSwitchRequest (to mysql_native_password, 20 bytes of scramble), as a MySQL 8 server sends one.
AUTH_SWITCH = packet(2, b"\xfemysql_native_password\x00" + bytes(range(1, 21)) + b"\x00")
OK = packet(2, b"\x00\x00\x00\x02\x00\x00\x00")
BLOCKED = packet(0, b"\xff\x69\x04Host '198.18.1.5' is blocked because of many connection errors; "
                    b"unblock with 'mariadb-admin flush-hosts'")


def test_handshake_response_bytes() -> None:
    assert handshake_response() == HANDSHAKE_RESPONSE


def test_access_denied_is_an_error_reply_with_its_code_and_message() -> None:
    reply, used = parse_login_reply(ACCESS_DENIED + b"rest")
    assert reply == LoginReply("error", 2, 1698, "Access denied for user 'vmesh-agent-probe'@'vmeas-vm'")
    assert used == len(ACCESS_DENIED)


def test_partial_packets_wait_and_garbage_raises() -> None:
    assert parse_login_reply(ACCESS_DENIED[:10]) == (None, 0)
    assert parse_login_reply(b"") == (None, 0)
    assert parse_login_reply(AUTH_SWITCH)[0] == LoginReply("switch", 2)
    assert parse_login_reply(OK)[0] == LoginReply("ok", 2)
    with pytest.raises(ValueError, match="unexpected packet 0x48"):
        parse_login_reply(b"\x04\x00\x00\x02HTTP")
    with pytest.raises(ValueError, match="empty packet"):
        parse_login_reply(b"\x00\x00\x00\x02")


async def _serve(script: list[bytes]) -> tuple[asyncio.Server, int, list[bytes]]:
    """A server that sends the first item at once, then one item after each packet received; records them."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(script[0])
            for answer in script[1:]:
                header = await reader.readexactly(4)
                received.append(header + await reader.readexactly(int.from_bytes(header[:3], "little")))
                writer.write(answer)
                await writer.drain()
            received.append(await reader.read(100))  # what follows (COM_QUIT), or b"" at the close
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


async def _probe(script: list[bytes]) -> tuple[LoginVerdict, list[bytes]]:
    server, port, received = await _serve(script)
    async with server:
        verdict = await asyncio.wait_for(login_probe("127.0.0.1", port), 5)
        await asyncio.sleep(0.05)  # let the handler record the close
    return verdict, received


async def test_access_denied_means_alive() -> None:
    verdict, received = await _probe([MARIADB_GREETING, ACCESS_DENIED])
    assert verdict == LoginVerdict(True, "5.5.5-10.11.19-MariaDB-0+deb12u1",
                                   "1698: Access denied for user 'vmesh-agent-probe'@'vmeas-vm'")
    assert received[0] == HANDSHAKE_RESPONSE


async def test_an_auth_switch_is_answered_with_empty_data() -> None:
    verdict, received = await _probe([MARIADB_GREETING, AUTH_SWITCH, ACCESS_DENIED])
    assert verdict.alive
    assert received[1] == b"\x00\x00\x00\x03"  # empty auth data, sequence 3


async def test_a_successful_login_quits() -> None:
    verdict, received = await _probe([MARIADB_GREETING, OK])
    assert verdict.alive and verdict.detail == "logged in"
    assert received[-1] == b"\x01\x00\x00\x00\x01"  # COM_QUIT


async def test_a_blocked_host_is_not_alive() -> None:
    verdict, _ = await _probe([BLOCKED])
    assert not verdict.alive
    assert verdict.detail.startswith("1129: Host '198.18.1.5' is blocked")


async def test_garbage_after_the_greeting_is_not_alive() -> None:
    verdict, _ = await _probe([MARIADB_GREETING, b"\x04\x00\x00\x02HTTP"])
    assert verdict == LoginVerdict(False, "5.5.5-10.11.19-MariaDB-0+deb12u1",
                                   "not a MySQL login reply: unexpected packet 0x48")


async def test_discoverys_first_words_answer_a_mysql_greeting_with_the_login_probe() -> None:
    server, port, received = await _serve([MARIADB_GREETING, ACCESS_DENIED])
    async with server:
        answer = await first_words("127.0.0.1", port, 5)
        await asyncio.sleep(0.05)
    assert answer.data == MARIADB_GREETING
    assert received[0] == HANDSHAKE_RESPONSE
