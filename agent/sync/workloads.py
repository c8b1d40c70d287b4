"""What the mesh-workload backends share: one object per VM, service and address family, owned by the Lease.

`WorkloadBackend` lists this VM's objects by its labels, creates or updates each (retrying on conflicts, taking
back an object of ours that someone relabelled), writes the health condition through the status subresource
(conditional on the resourceVersion), and deletes the objects no registration wants. A subclass names the
resource, builds the object of one service and family, and says what its write logs carry.
"""

from __future__ import annotations

import datetime
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import structlog

from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import (
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_VM,
    MANAGER,
    health_of,
    own_objects_selector,
    set_condition,
    workload_differs,
    workload_name,
)
from agent.cluster.resources import Resource
from agent.heartbeat import Heartbeat
from agent.state import Registration, group_by_service
from agent.sync.services import SharedServices

Body = dict[str, Any]
Health = tuple[bool, str, str]  # (healthy, reason, message)
WallClock = Callable[[], float]
WRITE_ATTEMPTS = 3


class WorkloadBackend(ABC):
    RESOURCE: ClassVar[Resource]
    KIND: ClassVar[str]  # how logs and errors name the objects: "workloadentry"
    CONDITION: ClassVar[str]  # the status condition that carries health: "Healthy"
    MESH: ClassVar[str]  # whose CRDs serve RESOURCE: "Istio"
    HEALTH_EVENT: ClassVar[str] = "health set"  # logged as f"{KIND} {HEALTH_EVENT}"
    HEALTH_FIELD: ClassVar[str] = "healthy"  # the log field of the condition's value

    def __init__(self, kube: KubeClient, namespace: str, vm: str, heartbeat: Heartbeat,
                 log: structlog.typing.FilteringBoundLogger, *, wall_clock: WallClock = time.time) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._heartbeat = heartbeat
        self._log = log
        self._wall_clock = wall_clock
        self._services = SharedServices(kube, namespace, vm, log)

    @abstractmethod
    def _build(self, service: str, svc: Body, registrations: list[Registration], lease: Body) -> Body:
        """The object of one service (`svc` as the cluster holds it) and address family."""

    @abstractmethod
    def _write_fields(self, body: Body) -> dict[str, Any]:
        """What the "created" / "updated" logs of `body` carry, besides the service and the object."""

    async def sync(self, registrations: Collection[Registration], *, terminating: bool = False) -> None:
        lease = await self._heartbeat.ensure()
        wanted: dict[str, tuple[Body, Health]] = {}
        for service, group in group_by_service(registrations).items():
            svc = await self._services.ensure(service, {(r.protocol, r.port) for r in group},
                                              selector={LABEL_APP: service})
            for family, regs in itertools.groupby(group, key=lambda r: r.family):
                family_regs = list(regs)
                wanted[workload_name(service, self.vm, family)] = (
                    self._build(service, svc, family_regs, lease),
                    health_of(family_regs, self.vm, terminating=terminating))
        current = {o["metadata"]["name"]: o for o in await self._own()}
        for name, (body, health) in wanted.items():
            written = await self._put(name, body, current.get(name))
            await self._put_health(written, health)
        for name in current.keys() - wanted.keys():
            await self._delete(name)

    @property
    def watched(self) -> tuple[Resource, str]:
        return self.RESOURCE, own_objects_selector(self.vm)

    def affected(self, kind: str, obj: Body) -> bool:
        return True  # one object per VM: any change by someone else is to be undone

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        await self.sync(registrations, terminating=True)

    async def remove_all(self) -> None:
        for o in await self._own():
            await self._delete(o["metadata"]["name"])

    async def _own(self) -> list[Body]:
        try:
            return await self._kube.list(self.RESOURCE, self.namespace, own_objects_selector(self.vm))
        except NotFound as exc:  # the collection itself is missing: the CRD is not installed
            raise ClusterError(f"the cluster does not serve {self.RESOURCE.qualified}/{self.RESOURCE.version}:"
                               f" install {self.MESH}'s CRDs, or choose another backend") from exc

    async def _put(self, name: str, body: Body, current: Body | None) -> Body:
        """Create or update the object; returns it as the cluster holds it (the status needs its resourceVersion)."""
        kind, resource = self.KIND, self.RESOURCE
        log = self._log.bind(service=body["metadata"]["labels"][LABEL_APP], object=f"{kind}/{name}")
        fields = self._write_fields(body)
        for _ in range(WRITE_ATTEMPTS):
            if current is None:
                try:
                    created = await self._kube.create(resource, self.namespace, body)
                    log.info(f"{kind} created", **fields)
                    return created
                except Conflict as exc:
                    if not exc.already_exists:
                        raise
                    current = await self._kube.get(resource, self.namespace, name)
                    self._check_ours(current, name)
            if not workload_differs(current, body):
                return current
            merged = {**current, "metadata": {**current["metadata"], **self._owned_metadata(current, body)},
                      "spec": body["spec"]}
            try:
                updated = await self._kube.replace(resource, self.namespace, name, merged)
                log.info(f"{kind} updated", **fields)
                return updated
            except Conflict:
                current = await self._kube.get(resource, self.namespace, name)
            except NotFound:
                current = None
        raise Conflict(f"{kind} {name} kept changing under us ({WRITE_ATTEMPTS} attempts); will retry")

    async def _put_health(self, current: Body, health: Health) -> None:
        """The CONDITION through the status subresource, conditional on the resourceVersion."""
        healthy, reason, message = health
        name = current["metadata"]["name"]
        for _ in range(WRITE_ATTEMPTS):
            now = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)
            conditions = set_condition((current.get("status") or {}).get("conditions"), self.CONDITION,
                                       healthy=healthy, reason=reason, message=message, now=now)
            if conditions is None:
                return
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "status": {"conditions": conditions}}
            try:
                await self._kube.patch_status(self.RESOURCE, self.namespace, name, patch)
                self._log.info(f"{self.KIND} {self.HEALTH_EVENT}", object=f"{self.KIND}/{name}",
                               **{self.HEALTH_FIELD: healthy}, reason=reason)
                return
            except Conflict:
                current = await self._kube.get(self.RESOURCE, self.namespace, name)
        raise Conflict(f"{self.KIND} {name} status kept changing under us ({WRITE_ATTEMPTS} attempts); will retry")

    async def _delete(self, name: str) -> None:
        try:
            await self._kube.delete(self.RESOURCE, self.namespace, name)
            self._log.info(f"{self.KIND} deleted", object=f"{self.KIND}/{name}")
        except NotFound:
            pass

    def _owned_metadata(self, current: Body, desired: Body) -> Body:
        """The metadata the agent owns (its labels merged over others', the owner), keeping the rest."""
        cur, want = current["metadata"], desired["metadata"]
        return {"labels": {**(cur.get("labels") or {}), **want["labels"]}, "ownerReferences": want["ownerReferences"]}

    def _check_ours(self, current: Body, name: str) -> None:
        """An object of our name carrying either of our labels is ours from before (relabelled by someone): take
        it back. Anything else is somebody else's."""
        labels = current["metadata"].get("labels") or {}
        if labels.get(LABEL_VM) != self.vm and labels.get(LABEL_MANAGED_BY) != MANAGER:
            raise ClusterError(f"{self.KIND} {name} already exists and is not this VM's "
                               f"(managed-by {labels.get(LABEL_MANAGED_BY)!r}, vm {labels.get(LABEL_VM)!r}); "
                               "leaving it alone")
