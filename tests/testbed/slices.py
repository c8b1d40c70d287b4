"""Every state an EndpointSlice went through, seen by a watch (polling would miss a state that lasts 12 ms)."""

from __future__ import annotations

from tests.testbed.cluster import Cluster
from tests.testbed.history import Body, History

SERVICE_LABEL = "kubernetes.io/service-name"


def readiness(slice_: Body) -> str:
    """A slice's endpoints' `ready` conditions as kubectl's custom columns print them: "true", "false",
    "true,false", "<none>" when it has no endpoints."""
    values = [str(ep["conditions"]["ready"]).lower() for ep in slice_.get("endpoints") or []
              if "ready" in (ep.get("conditions") or {})]
    return ",".join(values) or "<none>"


class SliceHistory(History):
    """The EndpointSlices of one namespace, watched in the background from now on: readiness per version."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__(cluster, "endpointslices", namespace)

    def of(self, service: str) -> list[str]:
        """The readiness of each version of `service`'s slices, in the order the watch delivered them."""
        return [readiness(e.obj) for e in self.events(
            lambda obj: (obj["metadata"].get("labels") or {}).get(SERVICE_LABEL) == service)]
