"""Default backend: a selector-less Service per service, and one EndpointSlice per VM, service and family.

No two VMs write the same slice (see objects.object_name). The shared Service is only ever extended (a missing
port is added with a resourceVersion-checked update) and never deleted here. The create / update / delete
cycle is `OwnedObjectsBackend`'s (agent/sync/backends/owned.py).
"""

from __future__ import annotations

from typing import Any

from agent.cluster.objects import LABEL_SERVICE_NAME, SLICE_CONTENT, build_endpoint_slice, own_slices_selector
from agent.cluster.resources import ENDPOINT_SLICES
from agent.state import Registration
from agent.sync.backends.owned import OwnedObjectsBackend

Body = dict[str, Any]


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
