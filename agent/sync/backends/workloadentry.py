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
from typing import Any

import structlog

from agent.cluster.kube import KubeClient
from agent.cluster.objects import CONDITION_HEALTHY, build_workload_entry
from agent.cluster.resources import WORKLOAD_ENTRIES
from agent.state import Registration
from agent.sync.backends.backend import LeaseGetter
from agent.sync.backends.owned import Preferred
from agent.sync.backends.workloads import Body, WallClock, WorkloadBackend


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
