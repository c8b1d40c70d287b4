"""One failing service does not keep the VM's other services out of the cluster (real kube-apiserver): a Service
name the apiserver rejects (`3db` is an RFC 1123 label but not the DNS-1035 label a Service needs) fails alone,
and its error is reported as that service's."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from agent.cluster.errors import Invalid
from agent.cluster.kube import KubeClient
from agent.cluster.objects import object_name
from agent.config import ClusterSettings
from agent.lease.heartbeat import Heartbeat
from agent.logs import get_logger
from agent.state import Registration
from agent.sync.backends.backend import Backend
from agent.sync.backends.endpoints import EndpointsBackend
from agent.sync.backends.endpointslice import EndpointSliceBackend
from agent.sync.backends.workloadentry import WorkloadEntryBackend
from agent.sync.failures import ServiceFailures
from tests.integration.test_backends import WLE, fleet, istio_crds, settings  # noqa: F401 (fixtures)
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

BACKENDS: dict[str, Callable[[KubeClient, str, str, Heartbeat], Backend]] = {
    "endpointslice": lambda kube, ns, vm, beat: EndpointSliceBackend(kube, ns, vm, beat.ensure, get_logger(vm=vm)),
    "endpoints": lambda kube, ns, vm, beat: EndpointsBackend(kube, ns, vm, beat.ensure, get_logger(vm=vm)),
    "workloadentry": lambda kube, ns, vm, beat: WorkloadEntryBackend(kube, ns, vm, beat.ensure, get_logger(vm=vm)),
}
WHERE = {"endpointslice": "endpointslice", "endpoints": "endpoints", "workloadentry": WLE}


@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_a_rejected_service_fails_alone(
    cluster: Cluster, namespace: str, settings: ClusterSettings, backend: str,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    if backend == "workloadentry":
        request.getfixturevalue("istio_crds")
    registrations = [Registration(name, 3306, "mysql", ip_address("198.18.8.1")) for name in ("3db", "mysqldb")]
    async with fleet(settings, namespace, ["vm-a"],
                     lambda kube, vm, beat: BACKENDS[backend](kube, namespace, vm, beat)) as [vm]:
        with pytest.raises(ServiceFailures) as failed:
            await vm.backend.sync(registrations)
        assert list(failed.value.errors) == ["3db"], "sorted first, and the only one that failed"
        assert isinstance(failed.value.errors["3db"], Invalid)
        assert "service 3db: " in str(failed.value)
        assert not failed.value.transient, "a rejected name is not retried like an unreachable apiserver"

        name = "mysqldb" if backend == "endpoints" else object_name("mysqldb", "vm-a", 4)
        held = cluster.get(WHERE[backend], name, namespace)
        assert held is not None, "the other service is registered"
        assert cluster.get("service", "mysqldb", namespace) is not None

        # Dropping the broken one lets the sync succeed, and what was registered stays as it was.
        await vm.backend.sync(registrations[1:])
        again = cluster.get(WHERE[backend], name, namespace)
        assert again is not None
        assert again["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"]


def test_a_running_agent_registers_the_others_and_reports_the_failing_service_on_its_own(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """A declared service `api` whose slice name is taken by another VM's object, next to discovered MySQL:
    mysqldb is registered, api is reported as not registered, with why, in `services` and `status`."""
    vm = make_vm("a")
    taken = object_name("api", vm.name, 4)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {taken}
  labels: {{kubernetes.io/service-name: api, vmesh.dev/vm: another-vm}}
addressType: IPv4
endpoints: [{{addresses: [198.18.7.9]}}]
""")
    vm.start_mariadb(mariadb_template)
    config = vm.write_config(namespace)
    config.write_text(config.read_text() + '\n[[service]]\nname = "api"\nport = 8080\nprotocol = "tcp"\n')
    vm.start_agent(config)

    def mysqldb_ready() -> bool:
        s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
        return bool(s and [e["conditions"]["ready"] for e in s.get("endpoints") or []] == [True])

    wait_until(mysqldb_ready, 20, "mysqldb registered although api fails")

    def services() -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in json.loads(vm.cli("services", "--json").stdout)}

    listed = wait_until(lambda: (found := services()) and found["mysqldb"]["registered"] and found, 10,
                        "mysqldb reported registered")
    assert listed["api"]["registered"] is False
    assert "not this VM's" in str(listed["api"]["error"])
    assert listed["mysqldb"]["error"] is None
    human = vm.cli("services").stdout
    assert "api  [sync failed: endpointslice" in human
    status = json.loads(vm.cli("status", "--json").stdout)
    assert status["cluster"]["reachable"] is True
    failed = [line for line in vm.log_lines() if line.get("event") == "sync failed"]
    assert failed and {line.get("service") for line in failed} == {"api"}, "one line, naming the service"

    # Stopping still removes what the VM registered (the failing service does not hold the rest up), and only that.
    assert vm.stop_agent() == 0
    assert cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace) is None
    assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is None
    assert cluster.get("endpointslice", taken, namespace)["metadata"]["labels"]["vmesh.dev/vm"] == "another-vm"  # type: ignore[index]
