"""The PostgreSQL, Redis and HTTP probes against the real servers, each on a free loopback port, through the path
the daemon runs (discovery.identify)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.discovery.identify import Identity, identify
from agent.discovery.listeners import Listener
from tests.testbed.ports import LOOPBACK, free_port, serving
from tests.testbed.waiting import wait_until

PROBE_TIMEOUT = 2.0
# A probe sent to a server that waits for more bytes (Redis given an SSLRequest) ends by this timeout.
FOREIGN_TIMEOUT = 0.5
START_TIMEOUT = 30


def accepting(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{log.stem} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(args: list[str], log: Path, *, user: str | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        if user is None:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                user=user, group=user, extra_groups=[])


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail("PostgreSQL is not installed; run scripts/bootstrap")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres_port() -> Iterator[int]:
    """A throw-away cluster; postgres refuses to run as root, so it runs as the `postgres` user."""
    if os.geteuid() != 0:
        pytest.fail("these tests need root (to run PostgreSQL as the postgres user)")
    bindir = postgres_bin()
    # Not under tmp_path: pytest's base temp dir is private to root, and the postgres user must reach its files.
    base = Path(tempfile.mkdtemp(prefix="vmesh-probe-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    subprocess.run([str(bindir / "initdb"), "--no-sync", "--auth=trust", "-U", "postgres", "-D", str(data)],
                   check=True, capture_output=True, cwd=base, user="postgres", group="postgres", extra_groups=[])
    port = free_port()
    proc = start([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(base),
                  "-c", f"listen_addresses={LOOPBACK}"], base / "postgres.log", user="postgres", cwd=base)
    try:
        wait_until(lambda: accepting(proc, port, base / "postgres.log"), START_TIMEOUT, f"postgres on {port}")
        yield port
    finally:
        stop(proc, signal.SIGINT)  # fast shutdown
        shutil.rmtree(base, ignore_errors=True)


def run_redis(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; run scripts/bootstrap")
    port = free_port()
    log = tmp / f"redis-{port}.log"
    proc = start(["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                  "--dir", str(tmp), *extra], log)
    try:
        wait_until(lambda: accepting(proc, port, log), START_TIMEOUT, f"redis on {port}")
    except BaseException:
        stop(proc)
        raise
    return proc, port


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = run_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield port
    finally:
        stop(proc)


@pytest.fixture
def redis_with_password_port(tmp_path: Path) -> Iterator[int]:
    proc, port = run_redis(tmp_path, "--requirepass", "probe-test-password")
    try:
        yield port
    finally:
        stop(proc)


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    async with serving(app) as port:
        yield port


@pytest.fixture
def closed_port() -> int:
    return free_port()


# The daemon's own path (discovery.identify, as the scanner calls it), each server on a free loopback port named
# as that protocol's well-known one: what it finds there, and that it tells the protocols apart.
ALLOW = {"mysql": "db", "postgres": "pg", "redis": "cache", "http": "web"}


async def speaks(port: int, expected: str, timeout: float = PROBE_TIMEOUT) -> Identity:
    return await identify(Listener(LOOPBACK, port), ALLOW, timeout, ports={port: expected})


async def test_postgres_is_identified(postgres_port: int) -> None:
    assert await speaks(postgres_port, "postgres") == Identity("postgres")


async def test_redis_is_identified(redis_port: int) -> None:
    assert await speaks(redis_port, "redis") == Identity("redis")


async def test_redis_is_identified_behind_a_password(redis_with_password_port: int) -> None:
    assert await speaks(redis_with_password_port, "redis") == Identity("redis")  # -NOAUTH is Redis's answer


async def test_http_is_identified(http_port: int) -> None:
    assert await speaks(http_port, "http") == Identity("http")


async def test_a_postgres_port_holding_redis_http_or_nothing_is_not_postgres(
    redis_port: int, http_port: int, closed_port: int
) -> None:
    waiting = await speaks(redis_port, "postgres", FOREIGN_TIMEOUT)  # Redis waits for a newline
    assert waiting.protocol == "unknown" and "no answer to the postgres probe within" in waiting.unsettled
    assert await speaks(http_port, "postgres") == Identity("unknown")  # 400 Bad Request: an answer, final
    refused = await speaks(closed_port, "postgres")
    assert refused.protocol == "unknown" and refused.unsettled == "connection refused; will retry"


async def test_a_redis_port_holding_postgres_http_or_nothing_is_not_redis(
    postgres_port: int, http_port: int, closed_port: int
) -> None:
    hung_up = await speaks(postgres_port, "redis")  # an invalid startup packet: PostgreSQL hangs up
    assert hung_up.protocol == "unknown" and hung_up.unsettled
    assert await speaks(http_port, "redis") == Identity("unknown")  # 400 Bad Request
    assert (await speaks(closed_port, "redis")).unsettled == "connection refused; will retry"


async def test_an_http_port_holding_postgres_redis_or_nothing_is_not_http(
    postgres_port: int, redis_port: int, closed_port: int
) -> None:
    assert (await speaks(postgres_port, "http")).protocol == "unknown"
    assert (await speaks(redis_port, "http")).protocol == "unknown"  # Redis hangs up on "Host:"
    assert (await speaks(closed_port, "http")).unsettled == "connection refused; will retry"
