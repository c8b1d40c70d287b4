"""istiod reads what the agent writes: for each backend Istio consumes, istiod's own registry (its debug
endpoints) lists `mysqldb.<ns>.svc.cluster.local`, port 3306 with the MySQL protocol from the port name,
and the VM's address; for WorkloadEntry, a killed MariaDB makes istiod mark the endpoint unhealthy (or
drop it), and a stopped agent removes it."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.istiod import Istiod
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

TIMEOUT = 30


@pytest.fixture(scope="module")
def istiod(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Istiod]:
    with Istiod(tmp_path_factory.mktemp("istiod"), cluster) as i:
        yield i


def addresses(endpoints: list[dict[str, Any]]) -> list[str]:
    return sorted(a for e in endpoints for a in e.get("Addresses") or [])


def healthy(endpoint: dict[str, Any]) -> bool:
    """istiod's model.HealthStatus: 1 Healthy, 2 UnHealthy, 3 Draining, 4 Terminating; 0 (unset) is sent to
    Envoy as healthy: what istiod gives the instances of a WorkloadEntry it considers healthy (it leaves out
    the WorkloadEntries whose Healthy condition is not True)."""
    return endpoint.get("HealthStatus") in (0, 1)


@pytest.fixture
def database_vm(make_vm: Callable[[str], VM], mariadb_template: Path) -> VM:
    vm = make_vm("db")
    vm.start_mariadb(mariadb_template)
    return vm


@pytest.mark.parametrize("backend", ["endpointslice", "endpoints", "workloadentry"])
def test_istiod_lists_the_vm_service_with_its_port_protocol_and_address(
    cluster: Cluster, namespace: str, database_vm: VM, istiod: Istiod, backend: str,
) -> None:
    host = f"mysqldb.{namespace}.svc.cluster.local"
    vm = database_vm
    legacy = cluster.token(namespace, shared=True) if backend == "endpoints" else ""  # not isolated per VM
    vm.start_agent(vm.write_config(namespace, legacy, backend=backend))

    service = wait_until(lambda: istiod.service(host), TIMEOUT, f"{host} in istiod's registry")
    assert [(p["name"], p["port"], p["protocol"]) for p in service["ports"]] == [("mysql", 3306, "MySQL")]
    endpoints = wait_until(lambda: [e for e in istiod.endpoints(host, namespace) if healthy(e)], TIMEOUT,
                           f"a healthy endpoint of {host} in istiod")
    assert addresses(endpoints) == [vm.address], endpoints
    assert [e["ServicePortName"] for e in endpoints] == ["mysql"]

    if backend == "workloadentry":
        assert vm.mariadb is not None
        vm.mariadb.stop(signal.SIGKILL)
        wait_until(lambda: not [e for e in istiod.endpoints(host, namespace) if healthy(e)], TIMEOUT,
                   "istiod sees the endpoint unhealthy or gone")
        vm.stop_agent()
        wait_until(lambda: not istiod.endpoints(host, namespace), TIMEOUT, "the endpoint removed from istiod")
