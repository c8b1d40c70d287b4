"""The endpoints, workloadentry and externalworkload backends against the real kube-apiserver.

The backends run in-process, several simulated VMs on this one event loop, each with its own cluster connection
and the agent's real ServiceAccount token (so the shipped Role is what is tested). Addresses are only data here:
198.18.0.0/15, nothing is sent to them. What the cluster holds is read back with kubectl as the admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from agent.cli.cluster_commands import deregister
from agent.cluster.kube import KubeClient
from agent.cluster.objects import object_name
from agent.config import ClusterSettings, Settings
from agent.lease.heartbeat import Heartbeat
from agent.logs import get_logger
from agent.state import Registration
from agent.sync.backends.backend import Backend
from agent.sync.backends.endpoints import EndpointsBackend
from agent.sync.backends.externalworkload import ExternalWorkloadBackend
from agent.sync.backends.workloadentry import WorkloadEntryBackend
from tests.testbed.cluster import Cluster
from tests.testbed.crds import SHARED_CRDS, install_istio_crds, install_linkerd_crds
from tests.testbed.waiting import wait_until

Body = dict[str, Any]
WLE = "workloadentries.networking.istio.io"
EW = "externalworkloads.workload.linkerd.io"
MakeBackend = Callable[[KubeClient, str, Heartbeat], Backend]



@dataclass
class SimulatedVM:
    name: str
    kube: KubeClient
    heartbeat: Heartbeat
    backend: Any  # one of the three backends; Any keeps their extra keyword arguments (terminating=) callable


@pytest.fixture(scope="session")
def istio_crds(cluster: Cluster) -> None:
    install_istio_crds(cluster)


@pytest.fixture(scope="session")
def linkerd_crds(cluster: Cluster) -> None:
    if not install_linkerd_crds(cluster):
        pytest.skip(f"Linkerd's ExternalWorkload CRD is not in {SHARED_CRDS} (no reachable registry serves it)")


@pytest.fixture
def settings(cluster: Cluster, namespace: str, tmp_path: Path) -> ClusterSettings:
    token = tmp_path / "token"
    # Several simulated VMs share this one client config, so the legacy shared account (not isolated by the
    # policy); the per-VM identities run in the agent-level tests (VM.write_config).
    token.write_text(cluster.token(namespace, shared=True))
    return ClusterSettings(server=cluster.env["APISERVER_URL"], ca_file=cluster.ca_file, token_file=str(token))


@contextlib.asynccontextmanager
async def fleet(settings: ClusterSettings, namespace: str, names: list[str],
                make: MakeBackend) -> AsyncIterator[list[SimulatedVM]]:
    vms: list[SimulatedVM] = []
    try:
        for name in names:
            kube = await KubeClient.connect(settings)
            log = get_logger(vm=name)
            heartbeat = Heartbeat(kube, namespace, name, interval=5, lease_duration=15, log=log)
            vms.append(SimulatedVM(name, kube, heartbeat, make(kube, name, heartbeat)))
        yield vms
    finally:
        await asyncio.gather(*(vm.kube.close() for vm in vms))


def reg(address: str, port: int = 3306, protocol: str = "mysql", *, ready: bool = True) -> Registration:
    return Registration("mysqldb", port, protocol, ip_address(address), ready=ready)


@contextlib.contextmanager
def timed(timings: dict[str, float], what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    timings[what] = round(time.monotonic() - start, 2)


# --- endpoints -------------------------------------------------------------------------------------------------

def endpoints_content(ep: Body) -> dict[str, tuple[tuple[int, ...], bool, str]]:
    """ip -> (port numbers, ready, owner Lease), checking on the way that no IP is listed twice."""
    content: dict[str, tuple[tuple[int, ...], bool, str]] = {}
    for subset in ep.get("subsets") or []:
        ports = tuple(sorted(p["port"] for p in subset["ports"]))
        in_subset = [e["ip"] for f in ("addresses", "notReadyAddresses") for e in subset.get(f) or []]
        assert len(in_subset) == len(set(in_subset)), f"duplicate IP in subset {ports}: {sorted(in_subset)}"
        for field in ("addresses", "notReadyAddresses"):
            for e in subset.get(field) or []:
                assert e["ip"] not in content, f"{e['ip']} listed in two subsets"
                content[e["ip"]] = (ports, field == "addresses", (e.get("targetRef") or {}).get("name", ""))
    return content


async def test_endpoints_fifty_vms_on_one_loop_share_one_endpoints_object(
    cluster: Cluster, namespace: str, settings: ClusterSettings
) -> None:
    names = [f"vm-{i:02d}" for i in range(50)]
    address = {vm: f"198.18.200.{i + 1}" for i, vm in enumerate(names)}
    failing = {vm for i, vm in enumerate(names) if i % 5 == 0}  # their checks fail: not ready
    xplugin = {vm for i, vm in enumerate(names) if i % 7 == 3}  # also serve 33060: a subset of their own

    def registrations(vm: str, *, ready: bool) -> list[Registration]:
        regs = [reg(address[vm], ready=ready)]
        return [*regs, reg(address[vm], 33060, "tcp", ready=ready)] if vm in xplugin else regs

    def expected(vms: list[str], *, all_ready: bool = False) -> dict[str, tuple[tuple[int, ...], bool, str]]:
        return {address[vm]: ((3306, 33060) if vm in xplugin else (3306,), all_ready or vm not in failing,
                              f"vmesh-{vm}") for vm in vms}

    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        return EndpointsBackend(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm), service_account="vm-sa")

    timings: dict[str, float] = {}
    async with fleet(settings, namespace, names, make) as vms:
        with timed(timings, "50 VMs register at once"):
            await asyncio.gather(*(vm.backend.sync(registrations(vm.name, ready=vm.name not in failing))
                                   for vm in vms))
        ep = cluster.get("endpoints", "mysqldb", namespace)
        assert ep is not None
        assert endpoints_content(ep) == expected(names)
        assert ep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vmesh-agent"
        assert sorted(sorted(p["name"] for p in s["ports"]) for s in ep["subsets"]) == [
            ["mysql"], ["mysql", "tcp-33060"]]

        svc = cluster.get("service", "mysqldb", namespace)
        assert svc is not None
        assert svc["metadata"]["annotations"]["alpha.istio.io/kubernetes-serviceaccounts"] == "vm-sa"
        assert "selector" not in svc["spec"]
        assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("mysql", 3306), ("tcp-33060", 33060)]

        # A resync with nothing changed writes nothing.
        with timed(timings, "50 VMs resync, nothing changed"):
            await asyncio.gather(*(vm.backend.sync(registrations(vm.name, ready=vm.name not in failing))
                                   for vm in vms))
        again = cluster.get("endpoints", "mysqldb", namespace)
        assert again is not None
        assert again["metadata"]["resourceVersion"] == ep["metadata"]["resourceVersion"]

        # Half of them leave while the others' checks recover, all at once.
        leaving, staying = vms[::2], vms[1::2]
        with timed(timings, "25 leave while 25 change readiness"):
            await asyncio.gather(*(vm.backend.remove_all() for vm in leaving),
                                 *(vm.backend.sync(registrations(vm.name, ready=True)) for vm in staying))
        ep = cluster.get("endpoints", "mysqldb", namespace)
        assert ep is not None
        assert endpoints_content(ep) == expected([vm.name for vm in staying], all_ready=True)

        # Consumers of EndpointSlices see the same addresses, through Kubernetes' mirroring controller.
        def mirrored() -> list[str]:
            slices = cluster.list("endpointslice", namespace, "kubernetes.io/service-name=mysqldb,"
                                  "endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io")
            return sorted({a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]
                           if e.get("conditions", {}).get("ready")})
        wait_until(lambda: mirrored() == sorted(address[vm.name] for vm in staying), 30, "the mirrored slices")

        # A failing check on one of them moves just its address to notReadyAddresses.
        sick = staying[0]
        await sick.backend.sync(registrations(sick.name, ready=False))
        ep = cluster.get("endpoints", "mysqldb", namespace)
        assert ep is not None
        content = endpoints_content(ep)
        assert content[address[sick.name]][1] is False
        assert sum(1 for _, ready, _ in content.values() if not ready) == 1

        # The rest leave: the Endpoints object vmesh-agent created goes with the last address; the Service stays.
        with timed(timings, "25 leave at once"):
            await asyncio.gather(*(vm.backend.remove_all() for vm in staying))
        assert cluster.get("endpoints", "mysqldb", namespace) is None
        assert cluster.get("service", "mysqldb", namespace) is not None
    print(f"\nendpoints backend, 50 simulated VMs: {timings}")


async def test_endpoints_join_an_istioctl_registered_service_and_leave_its_address_alone(
    cluster: Cluster, namespace: str, settings: ClusterSettings
) -> None:
    # What `istioctl register -n <ns> mysqldb 198.18.9.9 3306` left behind.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input="""
apiVersion: v1
kind: Service
metadata: {name: mysqldb}
spec:
  ports: [{name: mysql, port: 3306}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: mysqldb}
subsets:
- addresses: [{ip: 198.18.9.9}]
  ports: [{name: mysql, port: 3306}]
""")

    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        return EndpointsBackend(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm), service_account="vm-sa")

    async with fleet(settings, namespace, ["vm-a"], make) as [vm]:
        await vm.backend.sync([reg("198.18.9.10")])
        ep = cluster.get("endpoints", "mysqldb", namespace)
        assert ep is not None
        assert endpoints_content(ep) == {"198.18.9.9": ((3306,), True, ""),
                                         "198.18.9.10": ((3306,), True, "vmesh-vm-a")}
        assert len(ep["subsets"]) == 1, "same port set, same subset"
        svc = cluster.get("service", "mysqldb", namespace)
        assert svc is not None
        assert svc["metadata"]["annotations"]["alpha.istio.io/kubernetes-serviceaccounts"] == "vm-sa"

        await vm.backend.remove_all()
        ep = cluster.get("endpoints", "mysqldb", namespace)
        assert ep is not None, "not created by vmesh-agent: it stays"
        assert endpoints_content(ep) == {"198.18.9.9": ((3306,), True, "")}


async def test_endpoints_drop_the_addresses_of_a_vm_whose_lease_is_gone(
    cluster: Cluster, namespace: str, settings: ClusterSettings
) -> None:
    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        return EndpointsBackend(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm))

    async with fleet(settings, namespace, ["vm-a", "vm-b"], make) as [a, b]:
        await asyncio.gather(a.backend.sync([reg("198.18.9.1")]), b.backend.sync([reg("198.18.9.2")]))
        cluster.kubectl("delete", "lease", "vmesh-vm-b", "-n", namespace)  # what a peer's reaper does
        await a.backend.sync([reg("198.18.9.1")])
        ep = cluster.get("endpoints", "mysqldb", namespace)
        assert ep is not None
        assert endpoints_content(ep) == {"198.18.9.1": ((3306,), True, "vmesh-vm-a")}


# --- WorkloadEntry and ExternalWorkload -------------------------------------------------------------------------

def condition(obj: Body | None, kind: str) -> Body | None:
    if obj is None:
        return None
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


async def test_workloadentry_spec_health_and_removal(
    cluster: Cluster, namespace: str, settings: ClusterSettings, istio_crds: None
) -> None:
    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        return WorkloadEntryBackend(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm), service_account="vm-sa")

    def entry() -> Body | None:
        return cluster.get(WLE, object_name("mysqldb", "vm-a", 4), namespace)

    async with fleet(settings, namespace, ["vm-a"], make) as [vm]:
        await vm.backend.sync([reg("198.18.9.1")])
        we = entry()
        assert we is not None
        assert we["spec"] == {"address": "198.18.9.1", "ports": {"mysql": 3306},
                              "labels": {"app": "mysqldb", "vmesh.dev/vm": "vm-a"}, "serviceAccount": "vm-sa"}
        assert we["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vmesh-agent"
        assert we["metadata"]["annotations"]["proxy.istio.io/health-checks-enabled"] == "true"
        lease = cluster.get("lease", "vmesh-vm-a", namespace)
        assert lease is not None
        assert [o["uid"] for o in we["metadata"]["ownerReferences"]] == [lease["metadata"]["uid"]]
        healthy = condition(we, "Healthy")
        assert healthy is not None
        assert (healthy["status"], healthy["reason"]) == ("True", "HealthCheckPassing")
        svc = cluster.get("service", "mysqldb", namespace)
        assert svc is not None
        assert svc["spec"]["selector"] == {"app": "mysqldb"}

        await vm.backend.sync([reg("198.18.9.1")])
        same = entry()
        assert same is not None
        assert same["metadata"]["resourceVersion"] == we["metadata"]["resourceVersion"], "nothing changed: no write"

        await vm.backend.sync([reg("198.18.9.1", ready=False)])
        sick = condition(entry(), "Healthy")
        assert sick is not None
        assert (sick["status"], sick["reason"]) == ("False", "HealthCheckFailing")
        await vm.backend.sync([reg("198.18.9.1")])
        assert (condition(entry(), "Healthy") or {}).get("status") == "True"
        await vm.backend.mark_terminating([reg("198.18.9.1")])
        bye = condition(entry(), "Healthy")
        assert bye is not None
        assert (bye["status"], bye["reason"]) == ("False", "Terminating")

        await vm.backend.remove_all()
        assert entry() is None
        assert cluster.get("service", "mysqldb", namespace) is not None

        # Its Lease owns it: a reaped VM's entry goes with the Lease, through the garbage collector.
        await vm.backend.sync([reg("198.18.9.1")])
        assert entry() is not None
        cluster.kubectl("delete", "lease", "vmesh-vm-a", "-n", namespace)
        wait_until(lambda: entry() is None, 60, "the garbage collector to delete the WorkloadEntry")


async def test_externalworkload_spec_readiness_and_removal(
    cluster: Cluster, namespace: str, settings: ClusterSettings, linkerd_crds: None
) -> None:
    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        return ExternalWorkloadBackend(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm))

    def workload(family: int = 4) -> Body | None:
        return cluster.get(EW, object_name("mysqldb", "vm-a", family), namespace)

    async with fleet(settings, namespace, ["vm-a"], make) as [vm]:
        both = [reg("198.18.9.1"), reg("fd00:198:18::1")]
        await vm.backend.sync(both)
        ew = workload()
        assert ew is not None
        assert ew["spec"] == {
            "meshTLS": {"identity": "spiffe://root.linkerd.cluster.local/vm-a", "serverName": "vm-a.cluster.local"},
            "ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}],
            "workloadIPs": [{"ip": "198.18.9.1"}],
        }
        assert ew["metadata"]["labels"]["app"] == "mysqldb"
        assert ew["metadata"]["labels"]["vmesh.dev/vm"] == "vm-a"
        v6 = workload(6)
        assert v6 is not None, "Linkerd takes one workload IP: the IPv6 address gets its own object"
        assert v6["spec"]["workloadIPs"] == [{"ip": "fd00:198:18::1"}]
        ready = condition(ew, "Ready")
        assert ready is not None
        assert (ready["status"], ready["reason"]) == ("True", "HealthCheckPassing")
        svc = cluster.get("service", "mysqldb", namespace)
        assert svc is not None
        assert svc["spec"]["selector"] == {"app": "mysqldb"}

        await vm.backend.sync([reg("198.18.9.1", ready=False)])
        assert workload(6) is None, "the address that went is removed"
        sick = condition(workload(), "Ready")
        assert sick is not None
        assert (sick["status"], sick["reason"]) == ("False", "HealthCheckFailing")
        await vm.backend.sync([reg("198.18.9.1")])
        back = condition(workload(), "Ready")
        assert back is not None
        assert back["status"] == "True"
        assert back["lastTransitionTime"] >= sick["lastTransitionTime"]

        await vm.backend.remove_all()
        assert workload() is None
        assert cluster.get("service", "mysqldb", namespace) is not None


@pytest.mark.parametrize("kind", [WLE, EW])
async def test_mesh_backends_register_the_advertised_address_not_the_lowest(
    cluster: Cluster, namespace: str, settings: ClusterSettings, kind: str, request: pytest.FixtureRequest
) -> None:
    """MySQL bound to two addresses of the VM; the agent advertises 198.18.9.5 (it comes first in `hostname -I`)."""
    request.getfixturevalue("istio_crds" if kind == WLE else "linkerd_crds")
    advertised = [ip_address("198.18.9.5"), ip_address("198.18.9.1")]

    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        cls = WorkloadEntryBackend if kind == WLE else ExternalWorkloadBackend
        return cls(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm), preferred=lambda: advertised)

    async with fleet(settings, namespace, ["vm-a"], make) as [vm]:
        await vm.backend.sync([reg("198.18.9.1"), reg("198.18.9.5")])
        obj = cluster.get(kind, object_name("mysqldb", "vm-a", 4), namespace)
        assert obj is not None
        spec = obj["spec"]
        assert (spec["address"] if kind == WLE else spec["workloadIPs"][0]["ip"]) == "198.18.9.5"


async def test_deregister_removes_a_mesh_vms_objects_through_its_backend_and_names_them(
    cluster: Cluster, namespace: str, settings: ClusterSettings, istio_crds: None
) -> None:
    def make(kube: KubeClient, vm: str, heartbeat: Heartbeat) -> Backend:
        return WorkloadEntryBackend(kube, namespace, vm, heartbeat.ensure, get_logger(vm=vm))

    async with fleet(settings, namespace, ["vm-a", "vm-b"], make) as [a, b]:
        await a.backend.sync([reg("198.18.9.1"), reg("fd00:198:18::1")])
        await b.backend.sync([reg("198.18.9.2")])
    config = Settings(vm_name="vm-a", namespace=namespace, backend="workloadentry", cluster=settings)
    removed = await deregister(config)
    names = [object_name("mysqldb", "vm-a", family) for family in (4, 6)]
    assert sorted(removed) == sorted([*(f"workloadentry/{n}" for n in names), "lease/vmesh-vm-a"])
    assert all(cluster.get(WLE, n, namespace) is None for n in names)
    assert cluster.get(WLE, object_name("mysqldb", "vm-b", 4), namespace) is not None, "another VM's stays"
