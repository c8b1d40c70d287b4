"""What the mesh-workload backends share beyond `OwnedObjectsBackend`: a Service that selects `app:
<service>`, and the health condition written through the status subresource (conditional on the
resourceVersion) once the object is as wanted. A subclass names the resource and the condition, and builds the
object of one service and family at the address the agent advertises (see one_address).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import structlog

from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, MANAGER
from agent.discovery.addresses import IPAddress
from agent.state import Registration
from agent.sync.backends.backend import LeaseGetter
from agent.sync.backends.owned import OwnedObjectsBackend, Preferred
from agent.sync.update import Change, PatchStatus, update

Body = dict[str, Any]
WallClock = Callable[[], float]
# What the agent writes of its own objects besides metadata; everything else there is left as it is.
WORKLOAD_CONTENT = ("spec",)
LABEL_APP = "app"
REASON_PASSING = "HealthCheckPassing"
REASON_FAILING = "HealthCheckFailing"
REASON_TERMINATING = "Terminating"


def own_objects_selector(vm: str) -> str:
    """The objects one VM owns alone (WorkloadEntries, ExternalWorkloads)."""
    return f"{LABEL_VM}={vm},{LABEL_MANAGED_BY}={MANAGER}"


def one_address(registrations: Collection[Registration],
                preferred: Sequence[IPAddress] = ()) -> tuple[str, list[Registration]]:
    """WorkloadEntry and ExternalWorkload carry one address per family. When a service listens on several
    addresses of one family (listeners bound to specific addresses), the one the agent advertises: the first
    of `preferred` (the advertised address, then the candidates in `hostname -I` order) it listens on; the
    lowest only when none of them is (no preference known: `deregister`, a reaper)."""
    listening = {r.address for r in registrations}
    address = next((a for a in preferred if a in listening), None) or \
        min(listening, key=lambda a: (a.version, int(a)))
    return str(address), [r for r in registrations if r.address == address]


def health_of(registrations: Collection[Registration], vm: str, *,
              terminating: bool = False) -> tuple[bool, str, str]:
    """(healthy, reason, message) of one VM's workload, for a status condition."""
    if terminating:
        return False, REASON_TERMINATING, f"vmesh-agent on {vm} is deregistering it"
    failing = sorted({(r.port, r.protocol) for r in registrations if not r.ready})
    if not failing:
        return True, REASON_PASSING, f"health checks pass on {vm}"
    return (False, REASON_FAILING,
            f"health checks fail on {vm}: " + ", ".join(f"{p}/{proto}" for p, proto in failing))


def condition_time(moment: datetime.datetime) -> str:
    """metav1.Time: RFC 3339, seconds, UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[Body] | None, kind: str, *, healthy: bool, reason: str, message: str,
                  now: datetime.datetime) -> list[Body] | None:
    """`conditions` with the one of type `kind` set, or None when it already says exactly this. Other types
    are kept; lastTransitionTime moves only when the status flips."""
    status = "True" if healthy else "False"
    existing = [dict(c) for c in conditions or []]
    current = next((c for c in existing if c.get("type") == kind), None)
    if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            status, reason, message):
        return None
    same_status = (current is not None and current.get("status") == status
                   and current.get("lastTransitionTime"))
    condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": current["lastTransitionTime"] if current and same_status
                              else condition_time(now),
    }
    if current is None:
        return [*existing, condition]
    return [condition if c is current else c for c in existing]


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
