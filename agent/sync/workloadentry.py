"""Backend `workloadentry`: an Istio WorkloadEntry (networking.istio.io/v1) per VM, service and address family.

`<service>-<vm>` (`-v6` for IPv6) holds the address, the ports named as the Service names them, and the labels
`app: <service>` and `vmesh.dev/vm: <vm>`; the Service `<service>` selects `app: <service>`. Health is the
`Healthy` status condition, written through the status subresource; the annotation
`proxy.istio.io/health-checks-enabled: "true"` makes Istio honour it (without it Istio counts every entry
healthy). The Lease owns every entry, so a VM that dies and is reaped loses them to the garbage collector.
"""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Callable, Collection
from typing import Any

import structlog

from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import (
    CONDITION_HEALTHY,
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_VM,
    MANAGER,
    build_workload_entry,
    health_of,
    own_objects_selector,
    set_condition,
    workload_differs,
    workload_name,
)
from agent.cluster.resources import WORKLOAD_ENTRIES
from agent.heartbeat import Heartbeat
from agent.state import Registration
from agent.sync.services import SharedServices

Body = dict[str, Any]
WallClock = Callable[[], float]
WRITE_ATTEMPTS = 3
KIND = "workloadentry"


class WorkloadEntryBackend:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, heartbeat: Heartbeat,
                 log: structlog.typing.FilteringBoundLogger, *, service_account: str = "", network: str = "",
                 wall_clock: WallClock = time.time) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._heartbeat = heartbeat
        self._log = log
        self.service_account = service_account
        self.network = network
        self._wall_clock = wall_clock
        self._services = SharedServices(kube, namespace, vm, log)

    async def sync(self, registrations: Collection[Registration], *, terminating: bool = False) -> None:
        lease = await self._heartbeat.ensure()
        wanted: dict[str, tuple[Body, tuple[bool, str, str]]] = {}
        for service, group in _by_service(registrations).items():
            svc = await self._services.ensure(service, {(r.protocol, r.port) for r in group},
                                              selector={LABEL_APP: service})
            for family, regs in itertools.groupby(group, key=lambda r: r.family):
                family_regs = list(regs)
                body = build_workload_entry(svc, self.vm, self.namespace, family_regs, lease,
                                            service_account=self.service_account, network=self.network)
                wanted[workload_name(service, self.vm, family)] = (
                    body, health_of(family_regs, self.vm, terminating=terminating))
        current = {o["metadata"]["name"]: o for o in await self._own()}
        for name, (body, health) in wanted.items():
            written = await self._put(name, body, current.get(name))
            await self._put_health(written, health)
        for name in current.keys() - wanted.keys():
            await self._delete(name)

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        await self.sync(registrations, terminating=True)

    async def remove_all(self) -> None:
        for o in await self._own():
            await self._delete(o["metadata"]["name"])

    async def _own(self) -> list[Body]:
        try:
            return await self._kube.list(WORKLOAD_ENTRIES, self.namespace, own_objects_selector(self.vm))
        except NotFound as exc:  # the collection itself is missing: the CRD is not installed
            raise ClusterError(f"the cluster does not serve {WORKLOAD_ENTRIES.qualified}/{WORKLOAD_ENTRIES.version}:"
                               " install Istio's CRDs, or choose another backend") from exc

    async def _put(self, name: str, body: Body, current: Body | None) -> Body:
        """Create or update the entry; returns it as the cluster holds it (the status needs its resourceVersion)."""
        log = self._log.bind(service=body["spec"]["labels"][LABEL_APP], object=f"{KIND}/{name}")
        for _ in range(WRITE_ATTEMPTS):
            if current is None:
                try:
                    created = await self._kube.create(WORKLOAD_ENTRIES, self.namespace, body)
                    log.info(f"{KIND} created", address=body["spec"]["address"], ports=body["spec"]["ports"])
                    return created
                except Conflict as exc:
                    if not exc.already_exists:
                        raise
                    current = await self._kube.get(WORKLOAD_ENTRIES, self.namespace, name)
                    _check_ours(current, self.vm, name)
            if not workload_differs(current, body):
                return current
            merged = {**current, "metadata": {**current["metadata"], **_owned_metadata(current, body)},
                      "spec": body["spec"]}
            try:
                updated = await self._kube.replace(WORKLOAD_ENTRIES, self.namespace, name, merged)
                log.info(f"{KIND} updated", address=body["spec"]["address"], ports=body["spec"]["ports"])
                return updated
            except Conflict:
                current = await self._kube.get(WORKLOAD_ENTRIES, self.namespace, name)
            except NotFound:
                current = None
        raise Conflict(f"{KIND} {name} kept changing under us ({WRITE_ATTEMPTS} attempts); will retry")

    async def _put_health(self, current: Body, health: tuple[bool, str, str]) -> None:
        """The Healthy condition through the status subresource, conditional on the resourceVersion."""
        healthy, reason, message = health
        name = current["metadata"]["name"]
        for _ in range(WRITE_ATTEMPTS):
            now = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)
            conditions = set_condition((current.get("status") or {}).get("conditions"), CONDITION_HEALTHY,
                                       healthy=healthy, reason=reason, message=message, now=now)
            if conditions is None:
                return
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "status": {"conditions": conditions}}
            try:
                await self._kube.patch_status(WORKLOAD_ENTRIES, self.namespace, name, patch)
                self._log.info(f"{KIND} health set", object=f"{KIND}/{name}", healthy=healthy, reason=reason)
                return
            except Conflict:
                current = await self._kube.get(WORKLOAD_ENTRIES, self.namespace, name)
        raise Conflict(f"{KIND} {name} status kept changing under us ({WRITE_ATTEMPTS} attempts); will retry")

    async def _delete(self, name: str) -> None:
        try:
            await self._kube.delete(WORKLOAD_ENTRIES, self.namespace, name)
            self._log.info(f"{KIND} deleted", object=f"{KIND}/{name}")
        except NotFound:
            pass


def _owned_metadata(current: Body, desired: Body) -> Body:
    """The metadata the agent owns (its labels and annotations merged over others', the owner), keeping the rest."""
    cur, want = current["metadata"], desired["metadata"]
    return {
        "labels": {**(cur.get("labels") or {}), **want["labels"]},
        "annotations": {**(cur.get("annotations") or {}), **(want.get("annotations") or {})},
        "ownerReferences": want["ownerReferences"],
    }


def _check_ours(current: Body, vm: str, name: str) -> None:
    """An entry of our name carrying either of our labels is ours from before (relabelled by someone): take it
    back. Anything else is somebody else's."""
    labels = current["metadata"].get("labels") or {}
    if labels.get(LABEL_VM) != vm and labels.get(LABEL_MANAGED_BY) != MANAGER:
        raise ClusterError(f"{KIND} {name} already exists and is not this VM's "
                           f"(managed-by {labels.get(LABEL_MANAGED_BY)!r}, vm {labels.get(LABEL_VM)!r}); "
                           "leaving it alone")


def _by_service(registrations: Collection[Registration]) -> dict[str, list[Registration]]:
    grouped: dict[str, list[Registration]] = {}
    for r in sorted(registrations, key=lambda r: (r.service, r.family, r)):
        grouped.setdefault(r.service, []).append(r)
    return grouped
