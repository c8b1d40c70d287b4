"""What the backends with one object per VM, service and address family share (EndpointSlice, WorkloadEntry,
ExternalWorkload): the objects are this VM's alone, named by `object_name`, listed by the VM's labels.

A sync lists the VM's objects, then per service (each on its own: one failing service does not stop the
others, see failures.py) makes sure the Service has the ports, and creates or updates each object through the
one conflict-safe write path (update.py), keeping what others added to it (labels, annotations, finalizers,
owners). Only then are the objects no registration wants deleted, so an object under an older name is replaced
by its successor without a gap. An object is ours only when its `vmesh.dev/vm` label names this VM.

A subclass names the resource, builds the object of one service and family, and may write more after it (the
workloads' health condition).
"""

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import structlog

from agent.cluster.errors import ClusterError, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, object_name
from agent.cluster.resources import Resource
from agent.discovery.addresses import IPAddress
from agent.state import Registration, group_by_service
from agent.sync.backends.backend import LeaseGetter
from agent.sync.failures import raise_failures
from agent.sync.services import SharedServices
from agent.sync.update import Change, Delete, Put, update

Body = dict[str, Any]
Preferred = Callable[[], Sequence[IPAddress]]


def lease_owner_reference(lease: Body) -> Body:
    """Deleting the VM's Lease (shutdown, or a peer reaping a dead VM) garbage-collects what points here."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "name": lease["metadata"]["name"],
        "uid": lease["metadata"]["uid"],
    }


def owned_differs(current: Body, desired: Body, content: Collection[str]) -> bool:
    """True when what the agent owns of its object differs: its labels and annotations, its Lease owner
    reference, and the `content` fields. Server fields and what others added are not compared."""
    cur_meta, want_meta = current.get("metadata", {}), desired["metadata"]
    for key in ("labels", "annotations"):
        have = cur_meta.get(key) or {}
        if any(have.get(k) != v for k, v in (want_meta.get(key) or {}).items()):
            return True
    cur_owners = [o.get("uid") for o in cur_meta.get("ownerReferences") or [] if _is_lease_reference(o)]
    if cur_owners != [o["uid"] for o in want_meta.get("ownerReferences") or []]:
        return True
    return any(_normalise(current.get(f)) != _normalise(desired.get(f)) for f in content)


def merge_owned(current: Body, desired: Body, content: Collection[str]) -> Body:
    """`current` with what the agent owns set as `desired` has it: its labels and annotations merged over
    others', its Lease reference in place of the old one (other owners kept), the `content` fields.
    Finalizers, others' labels and annotations, and the status stay as they are."""
    cur, want = current["metadata"], desired["metadata"]
    owners = [o for o in cur.get("ownerReferences") or [] if not _is_lease_reference(o)]
    metadata = {
        **cur,
        "labels": {**(cur.get("labels") or {}), **(want.get("labels") or {})},
        "annotations": {**(cur.get("annotations") or {}), **(want.get("annotations") or {})},
        "ownerReferences": [*owners, *(want.get("ownerReferences") or [])],
    }
    return {**current, "metadata": metadata, **{f: desired[f] for f in content if f in desired}}


def _is_lease_reference(owner: Body) -> bool:
    return (owner.get("kind") == "Lease"
            and str(owner.get("apiVersion", "")).startswith("coordination.k8s.io/"))


def _normalise(value: Any) -> Any:
    """Lists compare as sets of their entries (the server keeps order, but the agent does not rely on it)."""
    if isinstance(value, list):
        return sorted(json.dumps(i, sort_keys=True) for i in value)
    return json.dumps(value, sort_keys=True)


class OwnedObjectsBackend(ABC):
    owned_by_lease = True  # every object written carries the Lease as an ownerReference (see Backend)
    RESOURCE: ClassVar[Resource]
    KIND: ClassVar[str]  # how logs and errors name the objects: "endpointslice"
    CONTENT: ClassVar[tuple[str, ...]]  # the fields besides metadata that the agent writes
    SERVICE_LABEL: ClassVar[str]  # the label that names the object's service
    MESH: ClassVar[str] = ""  # whose CRDs serve RESOURCE ("Istio"); "" for a built-in resource

    def __init__(self, kube: KubeClient, namespace: str, vm: str, lease: LeaseGetter,
                 log: structlog.typing.FilteringBoundLogger, *, preferred: Preferred = tuple) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._lease = lease  # the VM's Lease, the owner its objects name
        self._log = log
        self._preferred = preferred  # the advertised address first, then the other candidates
        self._services = SharedServices(kube, namespace, vm, log)
        # This VM's objects as of the last sync and the writes since: the removal after the Lease goes from
        # here without a LIST (a fleet stopping at once is short of requests, not of knowledge).
        self._known: dict[str, Body] = {}

    @property
    @abstractmethod
    def selector(self) -> str:
        """The label selector of this VM's own objects."""

    @abstractmethod
    def _build(self, svc: Body, registrations: list[Registration], lease: Body, *, terminating: bool) -> Body:
        """The object of one service (`svc` as the cluster holds it) and address family."""

    @abstractmethod
    def _write_fields(self, body: Body) -> dict[str, Any]:
        """What the "created" / "updated" logs of `body` carry, besides the service and the object."""

    def _service_selector(self, service: str) -> dict[str, str] | None:
        """The selector the Service needs to find the objects (none: a selector-less Service)."""
        return None

    async def _after_put(self, written: Body, registrations: list[Registration], *,
                         terminating: bool) -> None:
        """More to write once the object is as wanted (a status); nothing by default."""
        return

    # --- the Backend protocol -------------------------------------------------------------------------------

    @property
    def watched(self) -> tuple[Resource, str]:
        return self.RESOURCE, self.selector

    def affected(self, kind: str, obj: Body) -> bool:
        return True  # the VM's objects are its own alone: any change by someone else is to be undone

    async def sync(self, registrations: Collection[Registration], *, terminating: bool = False) -> None:
        lease = await self._lease()  # the VM's heartbeat exists even with nothing to register
        current = {o["metadata"]["name"]: o for o in await self._own()}
        self._known = dict(current)
        groups = group_by_service(registrations)
        failures: dict[str, ClusterError] = {}
        for service, group in groups.items():
            try:
                await self._sync_service(service, group, lease, current, terminating=terminating)
            except ClusterError as exc:
                failures[service] = exc
        wanted = {object_name(r.service, self.vm, r.family) for r in registrations}
        for name in sorted(current.keys() - wanted):
            service = str((current[name]["metadata"].get("labels") or {}).get(self.SERVICE_LABEL, ""))
            if service in failures:
                continue  # its successor may not exist yet: no gap, it goes on a later sync
            try:
                await self._delete(name, current[name])
            except ClusterError as exc:
                failures.setdefault(service or name, exc)
        raise_failures(failures)

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        await self.sync(registrations, terminating=True)

    async def remove_all(self, lease_uid: str = "") -> list[str]:
        removed: list[str] = []
        failures: dict[str, ClusterError] = {}
        # After the Lease (`lease_uid`), what this agent wrote is what there is:
        # a stale one is re-read on delete.
        for o in list(self._known.values()) if lease_uid and self._known else await self._own():
            if lease_uid and lease_uid not in {r.get("uid")
                                               for r in o["metadata"].get("ownerReferences") or []}:
                continue
            name = o["metadata"]["name"]
            try:
                if await self._delete(name, o):
                    removed.append(f"{self.KIND}/{name}")
            except ClusterError as exc:  # the others still go
                failures[str((o["metadata"].get("labels") or {}).get(self.SERVICE_LABEL, "")) or name] = exc
        raise_failures(failures)
        return removed

    # --- one service ----------------------------------------------------------------------------------------

    async def _sync_service(self, service: str, group: list[Registration], lease: Body,
                            current: dict[str, Body], *, terminating: bool) -> None:
        svc = await self._services.ensure(service, {(r.protocol, r.port) for r in group},
                                          selector=self._service_selector(service))
        for family, regs in itertools.groupby(group, key=lambda r: r.family):
            family_regs = list(regs)
            name = object_name(service, self.vm, family)
            body = self._build(svc, family_regs, lease, terminating=terminating)
            written = await self._put(service, name, body, current.get(name))
            await self._after_put(written, family_regs, terminating=terminating)

    async def _own(self) -> list[Body]:
        try:
            return await self._kube.list(self.RESOURCE, self.namespace, self.selector)
        except NotFound as exc:  # the collection itself is missing: the CRD is not installed
            if not self.MESH:
                raise
            raise ClusterError(f"the cluster does not serve "
                               f"{self.RESOURCE.qualified}/{self.RESOURCE.version}: "
                               f"install {self.MESH}'s CRDs, or choose another backend") from exc

    async def _put(self, service: str, name: str, body: Body, current: Body | None) -> Body:
        """Create or update the object; returns it as the cluster holds it."""
        def decide(found: Body | None) -> Change:
            if found is None:
                return Put(body)
            self._check_ours(found, name)
            return (Put(merge_owned(found, body, self.CONTENT)) if owned_differs(found, body, self.CONTENT)
                    else None)

        outcome = await update(self._kube, self.RESOURCE, self.namespace, name, decide, current=current)
        if outcome.verb in ("created", "updated"):
            self._log.info(f"{self.KIND} {outcome.verb}", service=service, object=f"{self.KIND}/{name}",
                           **self._write_fields(body))
        assert outcome.obj is not None  # a Put leaves the object in place
        self._known[name] = outcome.obj
        return outcome.obj

    async def _delete(self, name: str, current: Body) -> bool:
        """Delete our object (the version listed; re-read on a conflict, and left alone if no longer ours)."""
        def decide(found: Body | None) -> Change:
            return Delete() if found is not None and self._is_ours(found) else None

        outcome = await update(self._kube, self.RESOURCE, self.namespace, name, decide, current=current)
        self._known.pop(name, None)
        if outcome.verb == "deleted":
            self._log.info(f"{self.KIND} deleted", object=f"{self.KIND}/{name}")
            return True
        return False

    def _is_ours(self, obj: Body) -> bool:
        return (obj["metadata"].get("labels") or {}).get(LABEL_VM) == self.vm

    def _check_ours(self, found: Body, name: str) -> None:
        """Our name, but is it ours? Only if it is labelled for this VM (a lost managed-by label is taken
        back); an object labelled for another VM, or for none, is somebody else's."""
        if not self._is_ours(found):
            labels = found["metadata"].get("labels") or {}
            raise ClusterError(f"{self.KIND} {name} already exists and is not this VM's "
                               f"(managed-by {labels.get(LABEL_MANAGED_BY)!r}, vm {labels.get(LABEL_VM)!r}); "
                               "leaving it alone; delete it if it is stale, or register the service under "
                               "another name")
