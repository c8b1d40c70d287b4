"""Backend `externalworkload`: a Linkerd ExternalWorkload (workload.linkerd.io/v1beta1) per VM,
service and family.

`object_name(service, vm, family)` (one per family: Linkerd takes one workload IP per object) holds the IP the
agent advertises, the ports named as the Service names them, and `meshTLS`; its labels `app: <service>` and
`vmesh.dev/vm: <vm>` are what the Service `<service>` selects, and Linkerd turns the selected workloads into
EndpointSlices. Health is the `Ready` status condition, written through the status subresource. The Lease owns
every object (garbage-collected with it). The create / update / readiness / delete cycle is
`WorkloadBackend`'s (agent/sync/backends/workloads.py).

meshTLS must match the certificate of the Linkerd proxy on the VM (usually issued through SPIRE). The defaults
follow Linkerd's mesh-expansion guide with the VM name as the workload name: identity
`spiffe://root.linkerd.cluster.local/{vm}`, serverName `{vm}.cluster.local`. Both are templates: `{vm}`,
`{namespace}` and `{service}` are replaced.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

import structlog

from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, MANAGER, named_ports, object_name
from agent.cluster.resources import EXTERNAL_WORKLOADS
from agent.config import ExternalWorkloadSettings
from agent.discovery.addresses import IPAddress
from agent.state import Registration
from agent.sync.backends.backend import LeaseGetter
from agent.sync.backends.owned import Preferred, lease_owner_reference
from agent.sync.backends.workloads import LABEL_APP, Body, WallClock, WorkloadBackend, one_address

DEFAULT_IDENTITY = ExternalWorkloadSettings().identity  # the defaults, written once in agent/config.py
DEFAULT_SERVER_NAME = ExternalWorkloadSettings().server_name
CONDITION_READY = "Ready"  # Linkerd ExternalWorkload


def build_external_workload(service: Body, vm: str, namespace: str, registrations: Collection[Registration],
                            lease: Body, *, identity: str, server_name: str,
                            preferred: Sequence[IPAddress] = ()) -> Body:
    """Linkerd ExternalWorkload of one VM, service and family (Linkerd takes one workload IP); the Service
    selects it by the metadata label `app`."""
    first = min(registrations)
    address, regs = one_address(registrations, preferred)
    return {
        "apiVersion": "workload.linkerd.io/v1beta1",
        "kind": "ExternalWorkload",
        "metadata": {
            "name": object_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {LABEL_APP: first.service, LABEL_VM: vm, LABEL_MANAGED_BY: MANAGER},
            "ownerReferences": [lease_owner_reference(lease)],
        },
        "spec": {
            "meshTLS": {"identity": identity, "serverName": server_name},
            "ports": [{"name": p["name"], "port": p["port"], "protocol": "TCP"}
                      for p in named_ports(service, {(r.protocol, r.port) for r in regs})],
            "workloadIPs": [{"ip": address}],
        },
    }


class ExternalWorkloadBackend(WorkloadBackend):
    RESOURCE = EXTERNAL_WORKLOADS
    KIND = "externalworkload"
    CONDITION = CONDITION_READY
    MESH = "Linkerd"
    HEALTH_EVENT = "readiness set"
    HEALTH_FIELD = "ready"

    def __init__(self, kube: KubeClient, namespace: str, vm: str, lease: LeaseGetter,
                 log: structlog.typing.FilteringBoundLogger, *, identity: str = DEFAULT_IDENTITY,
                 server_name: str = DEFAULT_SERVER_NAME, wall_clock: WallClock = time.time,
                 preferred: Preferred = tuple) -> None:
        super().__init__(kube, namespace, vm, lease, log, wall_clock=wall_clock, preferred=preferred)
        self.identity = identity
        self.server_name = server_name
        self.mesh_tls("service")  # a broken template fails here, at start-up, not in every sync

    def mesh_tls(self, service: str) -> tuple[str, str]:
        """(identity, serverName) with the templates filled in."""
        values = {"vm": self.vm, "namespace": self.namespace, "service": service}
        try:
            return self.identity.format(**values), self.server_name.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"externalworkload identity {self.identity!r} / "
                             f"server_name {self.server_name!r}: only {{vm}}, {{namespace}} and {{service}} "
                             f"can be filled in ({exc!r})") from exc

    def _build(self, svc: Body, registrations: list[Registration], lease: Body, *, terminating: bool) -> Body:
        identity, server_name = self.mesh_tls(registrations[0].service)
        return build_external_workload(svc, self.vm, self.namespace, registrations, lease,
                                       identity=identity, server_name=server_name,
                                       preferred=self._preferred())

    def _write_fields(self, body: Body) -> dict[str, Any]:
        return {"addresses": [w["ip"] for w in body["spec"]["workloadIPs"]],
                "identity": body["spec"]["meshTLS"]["identity"]}
