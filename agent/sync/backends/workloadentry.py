"""Backend `workloadentry`: an Istio WorkloadEntry (networking.istio.io/v1) per VM,
service and address family.

`object_name(service, vm, family)` holds the address the agent advertises, the ports named as the Service
names them, and the labels `app: <service>` and `vmesh.dev/vm: <vm>`; the Service `<service>` selects `app:
<service>`. Health is the `Healthy` status condition, written through the status subresource; the annotation
`proxy.istio.io/health-checks-enabled: "true"` makes Istio honour it (without it Istio counts every entry
healthy). The Lease owns every entry, so a VM that dies and is reaped loses them to the garbage collector. The
create / update / health / delete cycle is `WorkloadBackend`'s (agent/sync/backends/workloads.py, owned.py).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

import structlog

from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, MANAGER, named_ports, object_name
from agent.cluster.resources import WORKLOAD_ENTRIES
from agent.discovery.addresses import IPAddress
from agent.state import Registration
from agent.sync.backends.backend import LeaseGetter
from agent.sync.backends.owned import Preferred, lease_owner_reference
from agent.sync.backends.workloads import LABEL_APP, Body, WallClock, WorkloadBackend, one_address

# Without it Istio ignores a WorkloadEntry's Healthy condition and treats the entry as always healthy.
ANNOTATION_ISTIO_HEALTH_CHECKS = "proxy.istio.io/health-checks-enabled"
CONDITION_HEALTHY = "Healthy"  # Istio WorkloadEntry


def build_workload_entry(service: Body, vm: str, namespace: str, registrations: Collection[Registration],
                         lease: Body, *, service_account: str = "", network: str = "",
                         preferred: Sequence[IPAddress] = ()) -> Body:
    """Istio WorkloadEntry of one VM, service and family; the Service selects it by spec.labels `app`."""
    first = min(registrations)
    address, regs = one_address(registrations, preferred)
    labels = {LABEL_APP: first.service, LABEL_VM: vm}
    spec: Body = {
        "address": address,
        "ports": {p["name"]: p["port"] for p in named_ports(service, {(r.protocol, r.port) for r in regs})},
        "labels": labels,
    }
    if service_account:
        spec["serviceAccount"] = service_account
    if network:
        spec["network"] = network
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": object_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {**labels, LABEL_MANAGED_BY: MANAGER},
            "annotations": {ANNOTATION_ISTIO_HEALTH_CHECKS: "true"},
            "ownerReferences": [lease_owner_reference(lease)],
        },
        "spec": spec,
    }


class WorkloadEntryBackend(WorkloadBackend):
    RESOURCE = WORKLOAD_ENTRIES
    KIND = "workloadentry"
    CONDITION = CONDITION_HEALTHY
    MESH = "Istio"

    def __init__(self, kube: KubeClient, namespace: str, vm: str, lease: LeaseGetter,
                 log: structlog.typing.FilteringBoundLogger, *, service_account: str = "", network: str = "",
                 wall_clock: WallClock = time.time, preferred: Preferred = tuple) -> None:
        super().__init__(kube, namespace, vm, lease, log, wall_clock=wall_clock, preferred=preferred)
        self.service_account = service_account
        self.network = network

    def _build(self, svc: Body, registrations: list[Registration], lease: Body, *, terminating: bool) -> Body:
        return build_workload_entry(svc, self.vm, self.namespace, registrations, lease,
                                    service_account=self.service_account, network=self.network,
                                    preferred=self._preferred())

    def _write_fields(self, body: Body) -> dict[str, Any]:
        return {"address": body["spec"]["address"], "ports": body["spec"]["ports"]}
