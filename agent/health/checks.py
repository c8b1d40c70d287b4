"""Health checks: each is an async callable that returns a CheckResult, bounded by its timeout,
and never raises.

A failure of any kind (refused, timed out, wrong answer, even a bug in a check) is a failing result with a
short human `output`, so that the monitor only ever deals with results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp

from agent.discovery.probes import mysql
from agent.health.credentials import Credentials

if TYPE_CHECKING:
    import pymysql

MAX_OUTPUT = 200
# An exec check keeps only this much of what the command prints; its last line is the output.
_EXEC_TAIL = 4096


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    output: str  # short and human: "connection refused", "MariaDB 10.11.19 greeting", "HTTP 503"
    duration: float  # seconds
    # A fact, not a flaky probe (no listener in the socket table):
    # the monitor need not wait for `fall` failures.
    definite: bool = False


class Check(Protocol):
    kind: str

    async def __call__(self) -> CheckResult: ...

    async def aclose(self) -> None: ...


def short(text: str, limit: int = MAX_OUTPUT) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe_os_error(exc: OSError) -> str:
    # asyncio words a refusal "Connect call failed ('127.0.0.1', 3306)"; the errno name is what people know.
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def describe_server(version: str) -> str:
    """ "5.5.5-10.11.19-MariaDB-0+deb12u1" -> "MariaDB 10.11.19"; "8.0.36-0ubuntu0.22.04.1"
    -> "MySQL 8.0.36"."""
    # MariaDB before 11 prefixes its version with "5.5.5-" so that old replicas accept it.
    bare = version.removeprefix("5.5.5-")
    number = bare.split("-", 1)[0]
    return f"{'MariaDB' if 'mariadb' in bare.lower() else 'MySQL'} {number}"


def last_line(output: bytes) -> str:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


TIMED_OUT = "timed out after"


def is_timeout(result: CheckResult) -> bool:
    """Whether `result` is a check that got no answer in time (what `timed` says then)."""
    return result.output.startswith(TIMED_OUT)


async def timed(timeout: float, body: Callable[[], Awaitable[tuple[bool, str]]],
                on_timeout: str = "") -> CheckResult:
    """Run `body` under `timeout` and turn whatever happens into a CheckResult."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            ok, output = await body()
    except TimeoutError:
        ok, output = False, on_timeout or f"{TIMED_OUT} {timeout:g}s"
    except OSError as exc:
        ok, output = False, describe_os_error(exc)
    except aiohttp.ClientError as exc:
        ok, output = False, str(exc) or type(exc).__name__
    except Exception as exc:
        # A check must never take its monitor down; a bug shows up as a failing check with its type.
        ok, output = False, f"{type(exc).__name__}: {exc}"
    return CheckResult(ok=ok, output=short(output), duration=time.monotonic() - started)


class BrokenCheck:
    """A check that could not be built (a setting that does not fit the service): it fails with the reason, so
    that the service is reported not ready and why, while every other service goes on."""

    def __init__(self, kind: str, problem: str) -> None:
        self.kind = kind
        self.problem = short(f"check cannot run: {problem}")

    async def __call__(self) -> CheckResult:
        return CheckResult(ok=False, output=self.problem, duration=0.0)

    async def aclose(self) -> None:
        pass


class TcpCheck:
    kind = "tcp"

    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    async def __call__(self) -> CheckResult:
        return await timed(self.timeout, self._connect)

    async def _connect(self) -> tuple[bool, str]:
        _, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        with contextlib.suppress(OSError):  # a reset while hanging up does not undo the connect
            await writer.wait_closed()
        return True, "connected"

    async def aclose(self) -> None:
        pass


class MysqlCheck:
    """Without credentials: a login probe. With credentials: a real login and `SELECT 1`.

    What a MariaDB 10.11 with Debian's configuration (name resolution on, max_connect_errors 100, log_warnings
    2) makes of each, measured (docs/decisions.md, "Do no harm: checks and probes"):
    - a greeting read and a hang-up (this check before issue 17) is a handshake error: +1 in the host cache's
      SUM_CONNECT_ERRORS for the client's address, which is blocked (ERR 1129, for every client on it) after
      100, and one "Aborted connection ... without authentication" warning in the error log;
    - the login probe (HandshakeResponse for a user that does not exist, empty auth data; the server answers
      1045/1698 access denied) counts nowhere that blocks, and logs one "Access denied" warning. So it runs
      seldom: the build wraps it in a GuardedCheck (agent/health/guard.py) that reads the socket table every
      interval and probes at most every `active_interval` (90 s) and on a suspicion;
    - a real login that succeeds logs nothing and resets the host's count of connect errors.
    """

    kind = "mysql"

    def __init__(self, host: str, port: int, *, timeout: float, credentials: Credentials | None = None,
                 executor: concurrent.futures.Executor | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._credentials = credentials
        # pymysql blocks, so a login runs in a thread: in the given (bounded, shared by the checks) executor,
        # or in one of its own, never in the loop's default one that aiohttp's DNS lookups need.
        self._own_executor = executor is None and credentials is not None
        self._executor = executor or (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vmesh-check")
            if credentials is not None else None)
        self._login_running: concurrent.futures.Future[tuple[bool, str]] | None = None

    def __repr__(self) -> str:
        return (f"MysqlCheck({self.host!r}, {self.port}, timeout={self.timeout}, "
                f"credentials={self._credentials!r})")

    async def __call__(self) -> CheckResult:
        if self._credentials is None:
            return await timed(self.timeout, self._probe)
        result = await timed(self.timeout, self._login)
        password = self._credentials.password
        if password and password in result.output:
            # No known server message echoes the password; this keeps it that way for unknown ones.
            result = CheckResult(result.ok, result.output.replace(password, "***"), result.duration)
        return result

    async def _probe(self) -> tuple[bool, str]:
        # Our timeout (timed) bounds it all. A bare non-blocking socket: no transport, protocol and stream
        # objects per check (bench/startup, idle CPU).
        verdict = await mysql.login_probe(self.host, self.port)
        if not verdict.version:  # no greeting, or an error in its place: "1129: Host ... is blocked ..."
            return False, verdict.detail
        if not verdict.alive:
            return False, f"{describe_server(verdict.version)}: {verdict.detail}"
        code = verdict.detail.split(":", 1)[0]
        return True, f"{describe_server(verdict.version)} answered a login probe ({code})"

    async def _login(self) -> tuple[bool, str]:
        # Should our timeout fire first, the thread still ends by itself within the socket timeouts given to
        # pymysql, and closes its connection. Until it has, no second login is started beside it.
        if self._login_running is not None and not self._login_running.done():
            return False, "the previous login check is still running; not starting another"
        assert self._executor is not None
        self._login_running = self._executor.submit(self._select_one)
        return await asyncio.wrap_future(self._login_running)

    def _select_one(self) -> tuple[bool, str]:
        # Imported by the first login (in its thread): the greeting check, the default, never needs pymysql,
        # and the agent's resident memory and start skip it (docs/decisions.md, "A light process").
        import pymysql  # noqa: PLC0415

        assert self._credentials is not None
        try:
            conn = pymysql.connect(
                host=self.host, port=self.port,
                user=self._credentials.user, password=self._credentials.password,
                connect_timeout=self.timeout, read_timeout=self.timeout, write_timeout=self.timeout,
            )
        except pymysql.err.MySQLError as exc:
            return False, _mysql_error(exc)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
            version = str(getattr(conn, "server_version", ""))  # set by the handshake; missing from the stubs
            return True, f"{describe_server(version)} SELECT 1"
        except pymysql.err.MySQLError as exc:
            return False, _mysql_error(exc)
        finally:
            with contextlib.suppress(pymysql.err.MySQLError, OSError):  # the server may be gone already
                conn.close()

    async def aclose(self) -> None:
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _mysql_error(exc: pymysql.err.MySQLError) -> str:
    """pymysql errors carry (code, message): "1045: Access denied for user 'ratings'@'127.0.0.1' (...)"."""
    if len(exc.args) == 2 and isinstance(exc.args[0], int):
        return f"{exc.args[0]}: {exc.args[1]}"
    return str(exc) or type(exc).__name__


class HttpCheck:
    """GET http://host:port/path; 2xx and 3xx pass (redirects are not followed: the server answered)."""

    kind = "http"

    def __init__(self, host: str, port: int, *, timeout: float, path: str = "/") -> None:
        self.host, self.port, self.timeout, self.path = host, port, timeout, path
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.url = f"http://{netloc}{path}"
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self) -> CheckResult:
        return await timed(self.timeout, self._get)

    async def _get(self) -> tuple[bool, str]:
        if self._session is None:
            # force_close: every check opens a new connection, as a new client would; a kept-alive one can
            # outlive a server that no longer accepts. trust_env stays off:
            # a check never goes through a proxy.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "vmesh-agent health check"},
            )
        async with self._session.get(self.url, allow_redirects=False) as response:
            return 200 <= response.status < 400, f"HTTP {response.status}"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ExecCheck:
    """Run a command (no shell); exit 0 passes. The output is the last line it printed (stdout and stderr)."""

    kind = "exec"

    def __init__(self, command: Sequence[str], *, timeout: float) -> None:
        self.command = tuple(command)
        self.timeout = timeout

    async def __call__(self) -> CheckResult:
        return await timed(self.timeout, self._run, on_timeout=f"timed out after {self.timeout:g}s; killed")

    async def _run(self) -> tuple[bool, str]:
        try:
            # A session of its own: on timeout the whole process group is killed, children included.
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return False, f"cannot run {self.command[0]}: {describe_os_error(exc)}"
        assert proc.stdout is not None
        tail = b""
        finished = False
        try:
            while chunk := await proc.stdout.read(_EXEC_TAIL):
                tail = (tail + chunk)[-_EXEC_TAIL:]
            code = await proc.wait()
            finished = True
        finally:
            # Timed out or cancelled. The command itself may have exited already while a child of it still
            # holds the output pipe open: kill the group either way (gone already: ProcessLookupError).
            if not finished:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                # Read to the end, so that the pipe transport sees EOF and closes.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        await proc.stdout.read()
        line = last_line(tail)
        if code == 0:
            return True, line or "exit 0"
        return False, line or (f"killed by signal {-code}" if code < 0 else f"exit status {code}")

    async def aclose(self) -> None:
        pass
