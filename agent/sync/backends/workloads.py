"""What the mesh-workload backends share beyond `OwnedObjectsBackend`: a Service that selects `app:
<service>`, and the health condition written through the status subresource (conditional on the
resourceVersion) once the object is as wanted. A subclass names the resource and the condition, and builds the
object of one service and family at the address the agent advertises (see objects.one_address).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any, ClassVar

import structlog

from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_APP, WORKLOAD_CONTENT, health_of, own_objects_selector, set_condition
from agent.state import Registration
from agent.sync.backends.backend import LeaseGetter
from agent.sync.backends.owned import OwnedObjectsBackend, Preferred
from agent.sync.update import Change, PatchStatus, update

Body = dict[str, Any]
WallClock = Callable[[], float]


class WorkloadBackend(OwnedObjectsBackend):
    CONTENT = WORKLOAD_CONTENT
    SERVICE_LABEL = LABEL_APP
    CONDITION: ClassVar[str]  # the status condition that carries health: "Healthy"
    HEALTH_EVENT: ClassVar[str] = "health set"  # logged as f"{KIND} {HEALTH_EVENT}"
    HEALTH_FIELD: ClassVar[str] = "healthy"  # the log field of the condition's value

    def __init__(self, kube: KubeClient, namespace: str, vm: str, lease: LeaseGetter,
                 log: structlog.typing.FilteringBoundLogger, *, wall_clock: WallClock = time.time,
                 preferred: Preferred = tuple) -> None:
        super().__init__(kube, namespace, vm, lease, log, preferred=preferred)
        self._wall_clock = wall_clock

    @property
    def selector(self) -> str:
        return own_objects_selector(self.vm)

    def _service_selector(self, service: str) -> dict[str, str] | None:
        return {LABEL_APP: service}

    async def _after_put(self, written: Body, registrations: list[Registration], *,
                         terminating: bool) -> None:
        """The CONDITION through the status subresource, conditional on the resourceVersion."""
        healthy, reason, message = health_of(registrations, self.vm, terminating=terminating)
        name = written["metadata"]["name"]

        def decide(found: Body | None) -> Change:
            if found is None:
                return None  # deleted meanwhile: the next sync makes it again
            now = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)
            conditions = set_condition((found.get("status") or {}).get("conditions"), self.CONDITION,
                                       healthy=healthy, reason=reason, message=message, now=now)
            return None if conditions is None else PatchStatus({"conditions": conditions})

        outcome = await update(self._kube, self.RESOURCE, self.namespace, name, decide, current=written)
        if outcome.verb == "status set":
            self._log.info(f"{self.KIND} {self.HEALTH_EVENT}", object=f"{self.KIND}/{name}",
                           **{self.HEALTH_FIELD: healthy}, reason=reason)
