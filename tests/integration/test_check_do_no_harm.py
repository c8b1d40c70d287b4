"""Do no harm: the agent's checks and probes against Debian's default MariaDB on a VM whose address resolves.

The bed has the users' defaults (tests/testbed/mariadb.py: Debian's my.cnf, name resolution on; the VM's
namespace resolves its own address): the first test proves that the old check's greeting-and-hang-up really
counts there, so the others would fail with it. performance_schema is turned on in these tests only, to read
the host cache (it changes nothing of how the cache counts).

VMESH_DO_NO_HARM_SECONDS shortens the long test for local iteration, never below 150 s: the old check had the
VM's address blocked after ~100 s, so a shorter run would prove nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cluster.objects import object_name
from agent.discovery.probes.mysql import handshake_response
from tests.testbed.cluster import Cluster
from tests.testbed.mariadb import RATINGS_USER, MariaDB
from tests.testbed.slices import SliceHistory
from tests.testbed.vm import ROOT, VM
from tests.testbed.waiting import wait_until

DURATION = max(150.0, float(os.environ.get("VMESH_DO_NO_HARM_SECONDS", "600")))
# The bound: at most 1 error-log line per minute per VM at the defaults.
LOG_LINES_PER_10_MIN = 10
# The documented bounds (agent/health/guard.py), plus what a sync to the apiserver takes.
KILL_BOUND = 1.5
HANG_WITH_CLIENTS = 2 * 1.0 + 1.0 + 0.5
HANG_QUIET_ACTIVE_INTERVAL = 10.0
# What the apiserver's write of the slice adds (measured 0.04 s idle, up to 1.3 s with a Go build on both cores).
SYNC_SLACK = 1.5


def host_cache(db: MariaDB, address: str) -> dict[str, Any] | None:
    rows = db.query("SELECT HOST, SUM_CONNECT_ERRORS, COUNT_HOST_BLOCKED_ERRORS, COUNT_HANDSHAKE_ERRORS "
                    f"FROM performance_schema.host_cache WHERE IP = '{address}'")
    if not rows:
        return None
    host, errors, blocked, handshake = rows[0]
    return {"host": host, "connect_errors": errors, "blocked": blocked, "handshake_errors": handshake}


def error_log_lines(db: MariaDB) -> list[str]:
    return db.error_log.read_text(errors="replace").splitlines()


def in_vm(vm: VM, code: str) -> str:
    """Python run inside the VM (its address is the client's), with this checkout's agent importable."""
    return vm.exec("env", f"PYTHONPATH={ROOT}", sys.executable, "-c", code).stdout


GREETING_AND_HANG_UP = """
import socket, sys
for _ in range({n}):
    with socket.create_connection(("{address}", 3306), timeout=5) as s:
        s.recv(512)
"""
LOGIN_PROBES = """
import asyncio
from agent.discovery.probes.mysql import login_probe
async def main():
    for _ in range({n}):
        print(await login_probe("{address}", 3306))
asyncio.run(main())
"""


def readiness(cluster: Cluster, vm: VM, namespace: str) -> list[bool]:
    s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    return [e["conditions"]["ready"] for e in (s or {}).get("endpoints") or []]


def start(vm: VM, template: Path) -> MariaDB:
    db = vm.start_mariadb(template, performance_schema=True)
    (skip_name_resolve, max_errors, warnings), = db.query(
        "SELECT @@skip_name_resolve, @@max_connect_errors, @@log_warnings")
    assert (skip_name_resolve, max_errors, warnings) == (0, 100, 2), "not Debian's defaults"
    return db


def test_the_bed_counts_a_greeting_and_hang_up_and_not_a_login_probe(
    make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """What the old check did (a greeting read, then hang up) is a handshake error on this bed; the login probe
    is not (and costs one log line), and neither is discovery's probe of a listener on the VM's address."""
    vm = make_vm("a")
    db = start(vm, mariadb_template)
    lines = len(error_log_lines(db))
    in_vm(vm, GREETING_AND_HANG_UP.format(n=3, address=vm.address))
    cache = host_cache(db, vm.address)
    assert cache == {"host": vm.name, "connect_errors": 3, "blocked": 0, "handshake_errors": 3}, cache
    new = error_log_lines(db)[lines:]
    assert len(new) == 3 and all("Aborted connection" in line for line in new), new

    lines = len(error_log_lines(db))
    probes = in_vm(vm, LOGIN_PROBES.format(n=5, address=vm.address)).splitlines()
    assert all("alive=True" in p and "Access denied for user 'vmesh-agent-probe'" in p for p in probes), probes
    assert host_cache(db, vm.address) == cache  # not one more error
    new = error_log_lines(db)[lines:]
    assert len(new) == 5 and all("Access denied for user 'vmesh-agent-probe'" in line for line in new), new

    # Discovery, one-shot, of a MariaDB bound to the VM's address only: its probe goes there (not to
    # 127.0.0.1) and answers the greeting with the login probe.
    db.stop()
    db.bind = vm.address
    db.start()
    for _ in range(3):
        _, report = vm.discover()
        (entry,) = [e for e in report["listeners"] if e["port"] == 3306]
        assert entry["protocol"] == "mysql", entry
    cache = host_cache(db, vm.address)
    assert cache is not None and cache["connect_errors"] == 0, cache  # the restart emptied the cache


@pytest.mark.timeout(DURATION + 120)
def test_ten_minutes_at_the_defaults_never_count_an_error_nor_fill_the_log(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = start(vm, mariadb_template)
    lines_before = len(error_log_lines(db))
    with SliceHistory(cluster, namespace) as history:
        # Default check settings, discovery on, no credentials (write_config only speeds up the cluster side).
        vm.start_agent(vm.write_config(namespace))
        wait_until(lambda: readiness(cluster, vm, namespace) == [True], 20, "ready")
        started = time.monotonic()
        while time.monotonic() - started < DURATION:
            assert vm.agent is not None and vm.agent.poll() is None, "the agent died"
            time.sleep(5)
            cache = host_cache(db, vm.address)
            assert cache is None or cache["connect_errors"] == 0, f"after {time.monotonic() - started:.0f}s: {cache}"
        ran = time.monotonic() - started
        seen = history.of("mysqldb")
    cache = host_cache(db, vm.address)
    new_lines = error_log_lines(db)[lines_before:]
    print(f"\n{ran:.0f}s at the defaults: host_cache {cache}; error log +{len(new_lines)} lines; "
          f"slice versions {seen}")
    # The host cache is on and holds the VM's address (the agent's login probes come from it).
    assert cache is not None and cache["host"] == vm.name, cache
    assert (cache["connect_errors"], cache["blocked"]) == (0, 0), cache
    assert seen and seen[-1] == "true" and "false" not in seen[seen.index("true"):], seen
    assert readiness(cluster, vm, namespace) == [True]
    assert len(new_lines) <= LOG_LINES_PER_10_MIN, new_lines


def test_a_killed_mariadb_is_not_ready_within_1_5_s(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, discovery={"interval": "30s"}))  # the check must notice
    wait_until(lambda: readiness(cluster, vm, namespace) == [True], 20, "ready")
    took = []
    for _ in range(3):
        killed = time.monotonic()
        db.stop(signal.SIGKILL)
        wait_until(lambda: readiness(cluster, vm, namespace) == [False], 5, "not ready after the kill", 0.01)
        took.append(time.monotonic() - killed)
        db.start()
        # Up to a discovery interval: a discovery pass that ran while the server was down keeps the registration
        # not ready until the next pass sees the listener again.
        wait_until(lambda: readiness(cluster, vm, namespace) == [True], 35, "ready again")
    print(f"\nkill -> not ready: {', '.join(f'{t:.2f}s' for t in took)}")
    assert max(took) <= KILL_BOUND, took


@contextmanager
def clients(address: str, every: float = 0.2) -> Iterator[list[int]]:
    """Connections to address:3306 from the host (the bridge) every `every` s, each given 3 s: a client load.
    Each one logs in (as the probe's user: a well-behaved client, whose host is never blocked)."""
    stop = threading.Event()
    made: list[int] = []

    def run() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((address, 3306), timeout=3) as s:
                    s.recv(512)
                    s.sendall(handshake_response())
                    s.recv(512)
            except OSError:
                pass
            made.append(1)
            stop.wait(every)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        yield made
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def _hang(cluster: Cluster, namespace: str, vm: VM, db: MariaDB, bound: float) -> tuple[float, float]:
    """SIGSTOP MariaDB: (seconds to the check's critical, seconds to the slice's not ready); then SIGCONT."""
    wait_until(lambda: readiness(cluster, vm, namespace) == [True], 20, "ready")
    paused, paused_wall = time.monotonic(), time.time()
    db.pause()
    try:
        wait_until(lambda: readiness(cluster, vm, namespace) == [False], bound + 5, "not ready while hung", 0.02)
        took = time.monotonic() - paused
    finally:
        db.resume()
    wait_until(lambda: readiness(cluster, vm, namespace) == [True], bound + 5, "ready again after SIGCONT")
    critical = next(line for line in vm.log_lines()
                    if line.get("event") == "health changed" and line.get("status") == "critical")
    flipped = datetime.fromisoformat(critical["timestamp"]).timestamp() - paused_wall
    return flipped, took


def test_a_hung_mariadb_with_clients_is_not_ready_within_the_bound(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """Clients' connections wait unaccepted in the listener's queue: a suspicion, then one login probe."""
    vm = make_vm("a")
    db = start(vm, mariadb_template)
    vm.start_agent(vm.write_config(namespace, discovery={"interval": "30s"}))
    wait_until(lambda: readiness(cluster, vm, namespace) == [True], 20, "ready")
    time.sleep(3)  # past the suspicion's rate limit after the first probe (SUSPICION_GAP)
    with clients(vm.address):
        flipped, took = _hang(cluster, namespace, vm, db, HANG_WITH_CLIENTS)
    cache = host_cache(db, vm.address)
    print(f"\nSIGSTOP with clients -> critical {flipped:.2f}s, slice not ready {took:.2f}s "
          f"(bound {HANG_WITH_CLIENTS:g}s); VM address in host_cache: {cache}")
    assert flipped <= HANG_WITH_CLIENTS
    assert took <= HANG_WITH_CLIENTS + SYNC_SLACK
    # At most the one probe that waited in the queue counts when the server wakes.
    assert cache is not None and cache["connect_errors"] <= 1, cache


def test_a_hung_mariadb_without_clients_is_not_ready_within_active_interval(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """Nothing knocks: the next login probe (every active_interval; 10 s here, 90 s by default) times out."""
    vm = make_vm("a")
    db = start(vm, mariadb_template)
    active = HANG_QUIET_ACTIVE_INTERVAL
    vm.start_agent(vm.write_config(namespace, discovery={"interval": "30s",
                                                         "check": {"active_interval": f"{active:g}s"}}))
    bound = active + 1.0 + 0.5
    flipped, took = _hang(cluster, namespace, vm, db, bound)
    cache = host_cache(db, vm.address)
    print(f"\nSIGSTOP without clients -> critical {flipped:.2f}s, slice not ready {took:.2f}s (bound {bound:g}s); "
          f"host_cache: {cache}")
    assert flipped <= bound
    assert took <= bound + SYNC_SLACK
    assert cache is not None and cache["connect_errors"] <= 1, cache


def test_with_credentials_the_login_check_works_and_resets_the_count(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = start(vm, mariadb_template)
    in_vm(vm, GREETING_AND_HANG_UP.format(n=5, address=vm.address))
    seeded = host_cache(db, vm.address)
    assert seeded is not None and seeded["connect_errors"] == 5, seeded
    secret = vm.workdir / "mysql.toml"
    secret.write_text(f'user = "{RATINGS_USER[0]}"\npassword = "{RATINGS_USER[1]}"\n')
    secret.chmod(0o600)
    lines = len(error_log_lines(db))
    vm.start_agent(vm.write_config(namespace, discovery={"check": {"credentials_file": str(secret)}}))
    wait_until(lambda: readiness(cluster, vm, namespace) == [True], 20, "ready")
    cache = wait_until(lambda: (c := host_cache(db, vm.address)) and c["connect_errors"] == 0 and c, 5,
                       "the count reset by a successful login")
    time.sleep(5)
    new = [line for line in error_log_lines(db)[lines:] if str(vm.name) in line]
    print(f"\nwith credentials: host_cache {seeded} -> {cache}; error log lines naming the VM: {new}")
    assert new == []  # the login check logs nothing (discovery's probe goes to 127.0.0.1: 'localhost')
