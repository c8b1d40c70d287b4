from hypothesis import given
from hypothesis import strategies as st

from agent.discovery.probes.mysql import MysqlGreeting, parse_greeting

# Captured from Debian 12's mariadb-server 10.11.19 (tests start the same server).
MARIADB_GREETING = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100030000003a7d294f3760604200"
    "fef7080200ff81150000000000001d000000675f27425872553443347721006d7973716c5f6e61746976655f70617373776f726400"
)
# The same server with skip-name-resolve, to a client its grants do not cover (error 1130 before any handshake).
HOST_NOT_ALLOWED = b"D\x00\x00\x00\xffj\x04Host '127.0.0.1' is not allowed to connect to this MariaDB server"


def test_mariadb_handshake() -> None:
    greeting = parse_greeting(MARIADB_GREETING)
    assert greeting == MysqlGreeting(version="5.5.5-10.11.19-MariaDB-0+deb12u1")


def test_error_packet_still_identifies_mysql() -> None:
    greeting = parse_greeting(HOST_NOT_ALLOWED)
    assert greeting is not None
    assert greeting.version == ""
    assert greeting.error.startswith("1130: Host '127.0.0.1' is not allowed")


def test_other_protocols_are_not_mysql() -> None:
    assert parse_greeting(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n") is None
    assert parse_greeting(b"HTTP/1.1 400 Bad Request\r\n") is None
    assert parse_greeting(b"+PONG\r\n") is None
    assert parse_greeting(b"") is None


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_greeting(data)
    assert result is None or isinstance(result, MysqlGreeting)
