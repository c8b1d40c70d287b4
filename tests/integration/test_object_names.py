"""Object names and ownership against the real kube-apiserver: one object per (VM, service, family), never
shared by two VMs, and the objects an older agent wrote under the old names replaced without a gap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

import pytest

from agent.cluster.errors import ClusterError
from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_service, object_name
from agent.cluster.resources import ENDPOINT_SLICES
from agent.config import ClusterSettings
from agent.lease.heartbeat import Heartbeat
from agent.logs import get_logger
from agent.state import Registration
from agent.sync.backends.backend import Backend
from agent.sync.backends.endpointslice import EndpointSliceBackend, build_endpoint_slice
from agent.sync.backends.workloadentry import WorkloadEntryBackend
from tests.integration.test_backends import WLE, fleet, istio_crds, settings  # noqa: F401 (fixtures)
from tests.testbed.cluster import Cluster

Body = dict[str, Any]
MakeBackend = Callable[[KubeClient, str, Heartbeat], Backend]



def slices(namespace: str) -> MakeBackend:
    return lambda kube, vm, beat: EndpointSliceBackend(kube, namespace, vm, beat.ensure, get_logger(vm=vm))


def entries(namespace: str) -> MakeBackend:
    return lambda kube, vm, beat: WorkloadEntryBackend(kube, namespace, vm, beat.ensure, get_logger(vm=vm))


def addresses_of(obj: Body) -> list[str]:
    if obj["kind"] == "EndpointSlice":
        return sorted(a for e in obj.get("endpoints") or [] for a in e["addresses"])
    return [obj["spec"]["address"]]


@pytest.mark.parametrize("kind", ["endpointslice", WLE])
async def test_two_vms_whose_names_join_alike_keep_their_own_objects(
    cluster: Cluster, namespace: str, settings: ClusterSettings, kind: str, request: pytest.FixtureRequest,  # noqa: F811
) -> None:
    """VM `a` serving `mysqldb-replica` and VM `replica-a` serving `mysqldb` both made `mysqldb-replica-a`."""
    if kind == WLE:
        request.getfixturevalue("istio_crds")
    make = slices(namespace) if kind == "endpointslice" else entries(namespace)
    wanted = {"a": Registration("mysqldb-replica", 3306, "mysql", ip_address("198.18.7.1")),
              "replica-a": Registration("mysqldb", 3306, "mysql", ip_address("198.18.7.2"))}
    async with fleet(settings, namespace, list(wanted), make) as vms:
        for _ in range(2):  # two rounds of resyncs: each VM repairs what it takes for its own
            for vm in vms:
                await vm.backend.sync([wanted[vm.name]])
        held = {o["metadata"]["labels"]["vmesh.dev/vm"]: (o["metadata"]["name"], addresses_of(o))
                for o in cluster.list(kind, namespace, "app.kubernetes.io/managed-by=vmesh-agent")}
    assert held == {vm: (object_name(r.service, vm, 4), [str(r.address)]) for vm, r in wanted.items()}
    assert len({name for name, _ in held.values()}) == 2


async def test_an_object_labelled_for_another_vm_is_never_taken(
    cluster: Cluster, namespace: str, settings: ClusterSettings,  # noqa: F811
) -> None:
    """Even under this VM's own name, and with vmesh-agent's managed-by label: the VM label decides."""
    name = object_name("mysqldb", "vm-a", 4)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  labels:
    kubernetes.io/service-name: mysqldb
    endpointslice.kubernetes.io/managed-by: vmesh-agent
    vmesh.dev/vm: vm-b
addressType: IPv4
endpoints: [{{addresses: [198.18.7.9]}}]
""")
    before = cluster.get("endpointslice", name, namespace)
    assert before is not None
    async with fleet(settings, namespace, ["vm-a"], slices(namespace)) as [vm]:
        with pytest.raises(ClusterError, match="not this VM's"):
            await vm.backend.sync([Registration("mysqldb", 3306, "mysql", ip_address("198.18.7.1"))])
    after = cluster.get("endpointslice", name, namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_a_slice_under_the_old_name_is_replaced_without_a_gap(
    cluster: Cluster, namespace: str, settings: ClusterSettings,  # noqa: F811
) -> None:
    """What an older agent left (`<service>-<vm>`) is adopted: the new slice exists before the old one goes."""
    registration = Registration("mysqldb", 3306, "mysql", ip_address("198.18.7.1"))
    async with fleet(settings, namespace, ["vm-a"], slices(namespace)) as [vm]:
        lease = await vm.heartbeat.ensure()
        old = build_endpoint_slice(build_service("mysqldb", namespace, "vm-a", [("mysql", 3306)]), "vm-a",
                                   namespace, [registration], lease)
        old["metadata"]["name"] = "mysqldb-vm-a"
        await vm.kube.create(ENDPOINT_SLICES, namespace, old)
        _, version = await vm.kube.list_with_version(ENDPOINT_SLICES, namespace)

        held: dict[str, list[str]] = {"mysqldb-vm-a": ["198.18.7.1"]}
        absent: list[str] = []  # the events after which no slice held the address
        old_gone = asyncio.Event()

        async def follow() -> None:
            async for kind, obj in vm.kube.watch(ENDPOINT_SLICES, namespace, resource_version=version,
                                                 label_selector="kubernetes.io/service-name=mysqldb"):
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    held.pop(name, None)
                else:
                    held[name] = addresses_of(obj)
                if not any("198.18.7.1" in a for a in held.values()):
                    absent.append(f"{kind} {name}")
                if kind == "DELETED" and name == "mysqldb-vm-a":
                    old_gone.set()

        watch = asyncio.create_task(follow())
        try:
            await vm.backend.sync([registration])
            await asyncio.wait_for(old_gone.wait(), 10)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    assert absent == []
    assert set(held) == {object_name("mysqldb", "vm-a", 4)}
    assert cluster.get("endpointslice", "mysqldb-vm-a", namespace) is None
