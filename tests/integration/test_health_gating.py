"""Health-gated readiness end to end: nothing ready before a check passed; a killed MariaDB is not ready in the
cluster within 2 s; a reload keeps what it did not change."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.slices import SliceHistory
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until


def readiness(cluster: Cluster, vm: VM, namespace: str) -> list[tuple[bool, bool]]:
    s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    return [(e["conditions"]["ready"], e["conditions"]["serving"]) for e in (s or {}).get("endpoints") or []]


def test_killed_mariadb_is_not_ready_within_2s_and_ready_again_after_rise(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template)
    # Default check settings; a slow discovery interval, so health checks (not discovery) must notice.
    vm.start_agent(vm.write_config(namespace, discovery={"interval": "30s"}))
    wait_until(lambda: readiness(cluster, vm, namespace) == [(True, True)], 20, "ready")

    killed = time.monotonic()
    db.stop(signal.SIGKILL)
    wait_until(lambda: readiness(cluster, vm, namespace) == [(False, False)], 3, "not ready after the kill")
    took = time.monotonic() - killed
    print(f"killed MariaDB not ready in the cluster after {took:.2f}s")
    assert took <= 2.0
    warning = vm.wait_log(lambda line: line.get("event") == "health changed" and line.get("status") == "critical",
                          1, "the health change logged")
    assert warning["service"] == "mysqldb"

    started = time.monotonic()
    db.start()
    wait_until(lambda: readiness(cluster, vm, namespace) == [(True, True)], 5, "ready again")
    print(f"ready again {time.monotonic() - started:.2f}s after MariaDB accepted connections (rise=2, 1s)")
    passing = [line for line in vm.log_lines() if line.get("event") == "health changed"]
    assert [line["status"] for line in passing] == ["passing", "critical", "passing"]  # first check, kill, restart


def test_nothing_is_published_ready_before_a_check_of_it_has_passed(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """A MariaDB without an account for the VM's address answers with error 1130, which the discovery probe
    takes for MySQL; a declared service's check fails. Neither may ever be ready, not even for a moment."""
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template)
    # Left: root@localhost, which MariaDB matches for loopback clients only. The discovery probe (127.0.0.1)
    # gets a greeting, the check (at the VM's address) error 1130.
    db.run_sql("DROP USER 'ratings'@'%'", "FLUSH PRIVILEGES")
    config = vm.write_config(namespace)
    config.write_text(config.read_text() + '\n[[service]]\nname = "batch"\nport = 9\nprotocol = "tcp"\n'
                      'check = { type = "exec", command = ["false"] }\n')
    with SliceHistory(cluster, namespace) as history:
        vm.start_agent(config)
        # Both end not ready; had either been published ready first, its history would show it.
        wait_until(lambda: "false" in history.of("mysqldb") and "false" in history.of("batch"), 20,
                   "both slices written, not ready")
        failing = vm.wait_log(lambda line: line.get("event") == "health check failing"
                              and line.get("service") == "mysqldb", 10, "the failing check logged")
        assert failing["output"].startswith("1130: "), failing
        assert set(history.of("mysqldb")) == {"false"}, history.of("mysqldb")
        assert set(history.of("batch")) == {"false"}, history.of("batch")


def services_view(vm: VM) -> dict[str, Any]:
    result = vm.cli("services", "--json")
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = {s["name"]: s for s in json.loads(result.stdout)}
    return found


def checks_run(vm: VM) -> int:
    count: int = services_view(vm)["mysqldb"]["registrations"][0]["check"]["checks"]
    return count


def test_reload_keeps_an_unchanged_checks_state_and_a_changed_check_starts_not_ready(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    config = vm.write_config(namespace)
    with SliceHistory(cluster, namespace) as history:
        agent = vm.start_agent(config)
        wait_until(lambda: history.of("mysqldb")[-1:] == ["true"], 20, "ready")
        before = checks_run(vm)
        for reloads in (1, 2):
            agent.send_signal(signal.SIGHUP)
            def reloaded(n: int = reloads) -> bool:
                seen: int = sum(line.get("event") == "config reloaded" for line in vm.log_lines())
                return seen == n
            wait_until(reloaded, 10, f"reload {reloads}")
        # The same monitor goes on counting (a restarted one would start again at 0) and nothing flapped.
        wait_until(lambda: checks_run(vm) >= before + 2, 5, "two more checks by the same monitor")
        assert set(history.of("mysqldb")) == {"true"}, history.of("mysqldb")

        # A changed check starts not ready: this one takes 2 s to pass its first time.
        config.write_text(config.read_text().replace(
            '[discovery]\n', '[discovery]\ncheck = { type = "exec", command = ["sleep", "2"], timeout = "5s" }\n'))
        agent.send_signal(signal.SIGHUP)
        wait_until(lambda: history.of("mysqldb")[-1:] == ["false"], 5, "not ready until the new check passed")
        wait_until(lambda: history.of("mysqldb")[-1:] == ["true"], 10, "ready once it passed")
