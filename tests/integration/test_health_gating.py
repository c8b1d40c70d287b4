"""Health-gated readiness end to end: a killed MariaDB is not ready in the cluster within 2 s."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
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
    vm.start_agent(vm.write_config(namespace, cluster.token(namespace), discovery={"interval": "30s"}))
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
