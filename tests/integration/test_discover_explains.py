"""`vmesh-agent discover` with the default config on a VM running MariaDB, PostgreSQL, Redis and an HTTP server:
each listener's likely protocol is named from its port, with how to allow it, and the ports the config does not
want are never connected to (an nftables counter of SYNs in the VM, and the servers' own counters, say so)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_probes_real import postgres_bin
from tests.testbed.vm import AGENT, VM
from tests.testbed.waiting import wait_until

START_TIMEOUT = 30
NOT_WANTED = (5432, 6379, 8080)
COUNTED = (3306, *NOT_WANTED)


def background(vm: VM, args: list[str], log: Path, *, user: str = "") -> subprocess.Popen[bytes]:
    prefix = ["runuser", "-u", user, "--"] if user else []
    with log.open("wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", vm.netns, *prefix, *args], stdout=out,
                                stderr=subprocess.STDOUT)


def logged(proc: subprocess.Popen[bytes], log: Path, text: str) -> bool:
    """Readiness from the server's own log: a test connection would be counted as one of the agent's."""
    if proc.poll() is not None:
        raise AssertionError(f"{log.name} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
    return text in log.read_text(errors="replace")


def count_syns(vm: VM) -> None:
    """Count the connections opened to each port inside the VM (loopback included: the agent probes 127.0.0.1)."""
    vm.exec("nft", "add table inet vmesh_syns")
    vm.exec("nft", "add chain inet vmesh_syns in { type filter hook input priority 0; policy accept; }")
    for port in COUNTED:
        vm.exec("nft", f"add rule inet vmesh_syns in tcp dport {port} tcp flags & (syn | ack) == syn counter")


def syns(vm: VM) -> dict[int, int]:
    rules = vm.exec("nft", "list chain inet vmesh_syns in").stdout
    found = {}
    for line in rules.splitlines():
        if "dport" in line and "packets" in line:
            words = line.split()
            found[int(words[words.index("dport") + 1])] = int(words[words.index("packets") + 1])
    return found


@pytest.fixture
def servers(make_vm: Callable[[str], VM], mariadb_template: Path) -> Iterator[tuple[VM, Path]]:
    """A VM with MariaDB on 3306, PostgreSQL on 5432, Redis on 6379 and `python -m http.server` on 8080."""
    vm = make_vm("a")
    count_syns(vm)
    vm.start_mariadb(mariadb_template)
    # Not under tmp_path: pytest's base temp dir is private to root, and the postgres user must reach its files.
    base = Path(tempfile.mkdtemp(prefix="vmesh-discover-"))
    shutil.chown(base, "postgres", "postgres")
    bindir = postgres_bin()
    subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "--no-sync", "--auth=trust",
                    "-U", "postgres", "-D", str(base / "data")], check=True, capture_output=True, cwd=base)
    procs = []
    try:
        pg_log = base / "postgres.log"
        procs.append(pg := background(vm, [str(bindir / "postgres"), "-D", str(base / "data"), "-p", "5432",
                                           "-k", str(base), "-c", "listen_addresses=0.0.0.0",
                                           "-c", "log_connections=on"], pg_log, user="postgres"))
        redis_log = base / "redis.log"
        procs.append(rd := background(vm, ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--save", "",
                                           "--appendonly", "no", "--dir", str(base)], redis_log))
        http_log = base / "http.log"
        procs.append(web := background(vm, [sys.executable, "-u", "-m", "http.server", "--bind", "0.0.0.0",
                                            "--directory", str(base), "8080"], http_log))
        wait_until(lambda: logged(pg, pg_log, "ready to accept connections"), START_TIMEOUT, "PostgreSQL")
        wait_until(lambda: logged(rd, redis_log, "Ready to accept connections"), START_TIMEOUT, "Redis")
        wait_until(lambda: logged(web, http_log, "Serving HTTP"), START_TIMEOUT, "http.server")
        yield vm, base
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def test_discover_names_each_protocol_from_its_port_and_how_to_allow_it_without_touching_it(
    servers: tuple[VM, Path]
) -> None:
    vm, base = servers
    before = syns(vm)
    assert before == dict.fromkeys(COUNTED, 0)

    result = vm.exec(*AGENT, "discover")  # no --config and none installed: the default config
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("0.0.0.0:")}
    print(result.stdout)
    assert rows["0.0.0.0:3306"].split()[:5] == ["0.0.0.0:3306", "mysql", "mariadbd", "register", "mysqldb"]
    for port, likely in ((5432, "postgres"), (6379, "redis"), (8080, "http")):
        row = rows[f"0.0.0.0:{port}"]
        assert row.split()[1] == f"{likely}?"
        assert row.split()[3:5] == ["skip", "-"]
        assert row.endswith(f"not probed (port {port} is {likely}'s): {likely} is not in discovery.allow; "
                            f'add {likely} = "<service>" to register it: '
                            f'[discovery] allow = {{ mysql = "mysqldb", {likely} = "<service>" }}')
    assert rows["0.0.0.0:5432"].split()[2] == "postgres"
    assert rows["0.0.0.0:6379"].split()[2] == "redis-server"

    _, report = vm.discover()
    by_port = {entry["port"]: entry for entry in report["listeners"] if entry["address"] == "0.0.0.0"}
    assert [(by_port[p]["protocol"], by_port[p]["likely_protocol"]) for p in NOT_WANTED] == [
        ("unknown", "postgres"), ("unknown", "redis"), ("unknown", "http")]

    # Not one connection to the ports the config does not want; MariaDB's greeting was read (the counter counts).
    after = syns(vm)
    assert {p: after[p] for p in NOT_WANTED} == dict.fromkeys(NOT_WANTED, 0)
    assert after[3306] >= 2
    assert "connection received" not in (base / "postgres.log").read_text()
    stats = vm.exec("redis-cli", "-p", "6379", "INFO", "stats").stdout
    assert "total_connections_received:1" in stats.splitlines()  # this one
    assert '"' not in (base / "http.log").read_text()  # http.server logs every request line in quotes
