"""Default backend: a selector-less Service per service, and one EndpointSlice per VM, service and family.

No two VMs write the same slice (see objects.object_name). The shared Service is only ever extended (a missing
port is added with a resourceVersion-checked update) and never deleted here. The create / update / delete
cycle is `OwnedObjectsBackend`'s (agent/sync/backends/owned.py).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from agent.cluster.objects import (
    LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME,
    LABEL_SLICE_MANAGED_BY,
    LABEL_VM,
    MANAGER,
    named_ports,
    object_name,
)
from agent.cluster.resources import ENDPOINT_SLICES
from agent.state import Registration
from agent.sync.backends.owned import OwnedObjectsBackend, lease_owner_reference

Body = dict[str, Any]
# What the agent writes of its own objects besides metadata; everything else there is left as it is.
SLICE_CONTENT = ("addressType", "ports", "endpoints")


def own_slices_selector(vm: str) -> str:
    return f"{LABEL_VM}={vm},{LABEL_SLICE_MANAGED_BY}={MANAGER}"


def build_endpoint_slice(
    service: Body, vm: str, namespace: str, registrations: Collection[Registration], lease: Body,
    *, terminating: bool = False,
) -> Body:
    """The slice of one VM, service and address family; port names follow the Service's."""
    first = next(iter(registrations))
    slice_ports = named_ports(service, {(r.protocol, r.port) for r in registrations})
    by_address: dict[str, bool] = {}
    for r in registrations:
        by_address[str(r.address)] = by_address.get(str(r.address), True) and r.ready
    endpoints = [
        {
            "addresses": [address],
            "conditions": {
                "ready": ready and not terminating,
                "serving": ready,
                "terminating": terminating,
            },
        }
        for address, ready in sorted(by_address.items())
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": object_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {
                LABEL_SERVICE_NAME: first.service,
                LABEL_SLICE_MANAGED_BY: MANAGER,
                LABEL_MANAGED_BY: MANAGER,
                LABEL_VM: vm,
            },
            "ownerReferences": [lease_owner_reference(lease)],
        },
        "addressType": "IPv4" if first.family == 4 else "IPv6",
        "ports": slice_ports,
        "endpoints": endpoints,
    }


class EndpointSliceBackend(OwnedObjectsBackend):
    RESOURCE = ENDPOINT_SLICES
    KIND = "endpointslice"
    CONTENT = SLICE_CONTENT
    SERVICE_LABEL = LABEL_SERVICE_NAME

    @property
    def selector(self) -> str:
        return own_slices_selector(self.vm)

    def _build(self, svc: Body, registrations: list[Registration], lease: Body, *, terminating: bool) -> Body:
        return build_endpoint_slice(svc, self.vm, self.namespace, registrations, lease,
                                    terminating=terminating)

    def _write_fields(self, body: Body) -> dict[str, Any]:
        return {"addresses": [a for e in body["endpoints"] for a in e["addresses"]],
                "ready": all(e["conditions"]["ready"] for e in body["endpoints"])}
