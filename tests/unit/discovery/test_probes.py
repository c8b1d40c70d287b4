"""PostgreSQL, Redis and HTTP probe parsers on bytes captured from the real servers (probe request sent)."""

from hypothesis import given
from hypothesis import strategies as st

from agent.discovery.probes.http import HttpReply, parse_response
from agent.discovery.probes.postgres import PostgresAnswer, parse_ssl_response
from agent.discovery.probes.redis import MAX_REPLY, RedisReply, parse_ping_reply

# --- PostgreSQL 15.18 (Debian 15.18-0+deb12u1), answers to the SSLRequest ---------------------------------
PG_NO_SSL = b"N"  # ssl = off (initdb's default)
PG_SSL = b"S"  # ssl = on, with a self-signed certificate
# A second SSLRequest on the same connection, after "N": the server no longer negotiates and answers with an
# ErrorResponse (protocol 3), exactly as a server that does not know the SSLRequest code would.
PG_ERROR_RESPONSE = (
    b"E\x00\x00\x00\x89SFATAL\x00VFATAL\x00C0A000\x00"
    b"Munsupported frontend protocol 1234.5679: server supports 3.0 to 3.0\x00"
    b"Fpostmaster.c\x00L2222\x00RProcessStartupPacket\x00\x00"
)
# The postmaster run with `ulimit -u 5`: it cannot fork a backend and still says so, in the old unframed format.
PG_FORK_FAILURE = b"Ecould not fork new process for connection: Resource temporarily unavailable\n\x00"

# --- Redis 7.0.15 (Debian 5:7.0.15-1~deb12u10), answers to b"PING\r\n" --------------------------------------
REDIS_PONG = b"+PONG\r\n"
REDIS_NOAUTH = b"-NOAUTH Authentication required.\r\n"  # --requirepass x
# Protected mode (no password, not bound to loopback only), client on a non-loopback address: 1067 bytes.
REDIS_DENIED = (
    b"-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for "
    b"the default user. In this mode connections are only accepted from the loopback interface. If you want to "
    b"connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable "
    b"protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by "
    b"connecting to Redis from the same host the server is running, however MAKE SURE Redis is not publicly "
    b"accessible from internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) "
    b"Alternatively you can just disable the protected mode by editing the Redis configuration file, and "
    b"setting the protected mode option to 'no', and then restarting the server. 3) If you started the server "
    b"manually just for testing, restart it with the '--protected-mode no' option. 4) Setup a an "
    b"authentication password for the default user. NOTE: You only need to do one of the above things in "
    b"order for the server to start accepting connections from the outside.\r\n"
)

# --- HTTP, answers to the probe's GET / HTTP/1.0 ---------------------------------------------------------------
# python3 -m http.server (Python 3.11.7) serving an empty directory.
PYTHON_HTTP_SERVER = (
    b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.7\r\nDate: Wed, 25 Nov 2026 22:06:00 GMT\r\n"
    b"Content-type: text/html; charset=utf-8\r\nContent-Length: 187\r\n\r\n"
    b'<!DOCTYPE HTML>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Directory listing for /</title>\n'
    b"</head>\n<body>\n<h1>Directory listing for /</h1>\n<hr>\n<ul>\n</ul>\n<hr>\n</body>\n</html>\n"
)
# aiohttp 3.14.5 web.Application with one GET / handler returning "hello".
AIOHTTP = (
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
    b"Date: Wed, 25 Nov 2026 22:06:00 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\nhello"
)

# --- Other protocols' answers (real captures too) ----------------------------------------------------------------
# Debian 12's mariadb-server 10.11.19 greeting (the same capture as in test_mysql_probe.py).
MARIADB_GREETING = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100030000003a7d294f3760604200"
    "fef7080200ff81150000000000001d000000675f27425872553443347721006d7973716c5f6e61746976655f70617373776f726400"
)
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
# aiohttp 3.14.5 sent the PostgreSQL SSLRequest.
AIOHTTP_TO_SSL_REQUEST = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 69\r\n"
    b"Date: Wed, 25 Nov 2026 22:06:03 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n"
    b"Invalid method encountered:\n\n  b'\\x00\\x00\\x00\\x08\\x04\\xd2\\x16/'\n    ^"
)
# aiohttp 3.14.5 sent PING.
AIOHTTP_TO_PING = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 45\r\n"
    b"Date: Wed, 25 Nov 2026 22:06:00 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n"
    b"Invalid method encountered:\n\n  b'PING'\n     ^"
)
# python3 -m http.server (3.11.7) sent PING: a one-word request line gets an HTTP/0.9 reply, body only.
PYTHON_HTTP_SERVER_TO_PING = (
    b'<!DOCTYPE HTML>\n<html lang="en">\n    <head>\n        <meta charset="utf-8">\n'
    b"        <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n"
    b"        <p>Error code: 400</p>\n        <p>Message: Bad request syntax ('PING').</p>\n"
    b"        <p>Error code explanation: 400 - Bad request syntax or unsupported method.</p>\n"
    b"    </body>\n</html>\n"
)
RANDOM_TEXT = [b"", b"hello world\n", b"220 mail.example.org ESMTP Postfix\r\n", b"\x00" * 16, b"\xff\xfe\xfd"]
FOREIGN = [MARIADB_GREETING, SSH_BANNER, *RANDOM_TEXT]


# PostgreSQL -------------------------------------------------------------------------------------------------------


def test_postgres_ssl_answers() -> None:
    assert parse_ssl_response(PG_SSL) == PostgresAnswer(ssl=True)
    assert parse_ssl_response(PG_NO_SSL) == PostgresAnswer(ssl=False)


def test_postgres_error_response_identifies_postgres() -> None:
    answer = parse_ssl_response(PG_ERROR_RESPONSE)
    assert answer == PostgresAnswer(
        ssl=False, error="0A000: unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0"
    )


def test_postgres_error_response_cut_by_the_read_bound_after_the_message() -> None:
    cut = PG_ERROR_RESPONSE[: PG_ERROR_RESPONSE.index(b"Fpostmaster.c")]
    answer = parse_ssl_response(cut)
    assert answer is not None
    assert answer.error.startswith("0A000: unsupported frontend protocol")


def test_postgres_fork_failure_identifies_postgres() -> None:
    answer = parse_ssl_response(PG_FORK_FAILURE)
    assert answer == PostgresAnswer(
        ssl=False, error="could not fork new process for connection: Resource temporarily unavailable"
    )


def test_postgres_single_bytes_only_alone() -> None:
    for data in [b"SN", b"S\r\n", b"N\x00", b"s", b"n", b"E", b"Y"]:
        assert parse_ssl_response(data) is None, data


def test_postgres_malformed_error_responses() -> None:
    no_terminator = b"E\x00\x00\x00\x88" + PG_ERROR_RESPONSE[5:-1]  # length says it is complete
    assert parse_ssl_response(no_terminator) is None
    assert parse_ssl_response(PG_ERROR_RESPONSE + b"\x00") is None  # bytes beyond the declared length
    assert parse_ssl_response(b"E\x00\x00\x00\x89" + b"X" * 132) is None  # not a field type
    assert parse_ssl_response(b"E\x7f\xff\xff\xff" + PG_ERROR_RESPONSE[5:]) is None  # absurd length
    assert parse_ssl_response(b"E\x00\x00\x00\x08Fa.c\x00\x00") is None  # no message field


def test_postgres_rejects_other_protocols() -> None:
    for data in [*FOREIGN, REDIS_PONG, REDIS_NOAUTH, AIOHTTP_TO_SSL_REQUEST, PYTHON_HTTP_SERVER]:
        assert parse_ssl_response(data) is None, data[:40]


@given(st.binary(max_size=600))
def test_postgres_random_bytes_never_raise(data: bytes) -> None:
    result = parse_ssl_response(data)
    assert result is None or isinstance(result, PostgresAnswer)


# Redis ------------------------------------------------------------------------------------------------------------


def test_redis_pong() -> None:
    reply = parse_ping_reply(REDIS_PONG)
    assert reply == RedisReply()
    assert reply.pong


def test_redis_noauth_identifies_redis() -> None:
    reply = parse_ping_reply(REDIS_NOAUTH)
    assert reply == RedisReply(error="NOAUTH Authentication required.")
    assert not reply.pong


def test_redis_protected_mode_identifies_redis_whole_or_cut_by_the_read_bound() -> None:
    whole = parse_ping_reply(REDIS_DENIED)
    cut = parse_ping_reply(REDIS_DENIED[:MAX_REPLY])
    assert whole is not None
    assert cut is not None
    assert whole.error.startswith("DENIED Redis is running in protected mode")
    assert cut.error == REDIS_DENIED[1:MAX_REPLY].decode()


def test_redis_short_unterminated_or_unknown_errors_are_not_redis() -> None:
    assert parse_ping_reply(b"-ERR") is None  # a short, unterminated line is a partial read of anything
    assert parse_ping_reply(b"-ERR max number of clients reached\r\n") == RedisReply(
        error="ERR max number of clients reached"
    )
    assert parse_ping_reply(b"-FOO bar\r\n") is None
    assert parse_ping_reply(b"+PONG\r\n+PONG\r\n") is None
    assert parse_ping_reply(b"-ERR one\r\n-ERR two\r\n") is None


def test_redis_rejects_other_protocols() -> None:
    for data in [*FOREIGN, PG_NO_SSL, PG_ERROR_RESPONSE, AIOHTTP_TO_PING, PYTHON_HTTP_SERVER_TO_PING]:
        assert parse_ping_reply(data) is None, data[:40]
    assert parse_ping_reply(b"+OK POP3 server ready\r\n") is None


@given(st.binary(max_size=600))
def test_redis_random_bytes_never_raise(data: bytes) -> None:
    result = parse_ping_reply(data)
    assert result is None or isinstance(result, RedisReply)


# HTTP -------------------------------------------------------------------------------------------------------------


def test_http_python_http_server() -> None:
    assert parse_response(PYTHON_HTTP_SERVER) == HttpReply(status=200, server="SimpleHTTP/0.6 Python/3.11.7")


def test_http_aiohttp() -> None:
    assert parse_response(AIOHTTP) == HttpReply(status=200, server="Python/3.11 aiohttp/3.14.5")
    assert parse_response(AIOHTTP_TO_PING) == HttpReply(status=400, server="Python/3.11 aiohttp/3.14.5")


def test_http_server_header_only_when_read_whole() -> None:
    before_server = AIOHTTP.index(b"Server:")
    assert parse_response(AIOHTTP[:before_server]) == HttpReply(status=200, server="")
    assert parse_response(AIOHTTP[: before_server + 20]) == HttpReply(status=200, server="")


def test_http_status_line_variants() -> None:
    assert parse_response(b"HTTP/1.1 204\r\n\r\n") == HttpReply(status=204)
    assert parse_response(b"HTTP/1.1 301 Moved Permanently\r\nserver:  nginx/1.22.1 \r\n\r\n") == HttpReply(
        status=301, server="nginx/1.22.1"
    )
    assert parse_response(b"HTTP/2 200\r\n\r\n") is None
    assert parse_response(b"HTTP/1.1 999 Nope\r\n") is None
    assert parse_response(b"HTTP/1.1 20 OK\r\n") is None
    assert parse_response(b"HTTP/1.1 200 OK") is None  # the status line must be complete
    assert parse_response(b" HTTP/1.1 200 OK\r\n") is None


def test_http_rejects_other_protocols() -> None:
    for data in [*FOREIGN, PG_SSL, PG_ERROR_RESPONSE, REDIS_PONG, REDIS_NOAUTH, PYTHON_HTTP_SERVER_TO_PING]:
        assert parse_response(data) is None, data[:40]


@given(st.binary(max_size=600))
def test_http_random_bytes_never_raise(data: bytes) -> None:
    result = parse_response(data)
    assert result is None or isinstance(result, HttpReply)
