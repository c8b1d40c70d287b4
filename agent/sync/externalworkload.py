"""Backend `externalworkload`: a Linkerd ExternalWorkload (workload.linkerd.io/v1beta1) per VM, service and family.

`<service>-<vm>` (`-v6` for IPv6: Linkerd takes one workload IP per object) holds the IP, the ports named as the
Service names them, and `meshTLS`; its labels `app: <service>` and `vmesh.dev/vm: <vm>` are what the Service
`<service>` selects, and Linkerd turns the selected workloads into EndpointSlices. Health is the `Ready` status
condition, written through the status subresource. The Lease owns every object (garbage-collected with it).

meshTLS must match the certificate of the Linkerd proxy on the VM (usually issued through SPIRE). The defaults
follow Linkerd's mesh-expansion guide with the VM name as the workload name:
identity `spiffe://root.linkerd.cluster.local/{vm}`, serverName `{vm}.cluster.local`. Both are templates:
`{vm}`, `{namespace}` and `{service}` are replaced.
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
    CONDITION_READY,
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_VM,
    MANAGER,
    build_external_workload,
    health_of,
    own_objects_selector,
    set_condition,
    workload_differs,
    workload_name,
)
from agent.cluster.resources import EXTERNAL_WORKLOADS
from agent.heartbeat import Heartbeat
from agent.state import Registration
from agent.sync.services import SharedServices

Body = dict[str, Any]
WallClock = Callable[[], float]
WRITE_ATTEMPTS = 3
KIND = "externalworkload"
DEFAULT_IDENTITY = "spiffe://root.linkerd.cluster.local/{vm}"
DEFAULT_SERVER_NAME = "{vm}.cluster.local"


class ExternalWorkloadBackend:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, heartbeat: Heartbeat,
                 log: structlog.typing.FilteringBoundLogger, *, identity: str = DEFAULT_IDENTITY,
                 server_name: str = DEFAULT_SERVER_NAME, wall_clock: WallClock = time.time) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._heartbeat = heartbeat
        self._log = log
        self.identity = identity
        self.server_name = server_name
        self._wall_clock = wall_clock
        self._services = SharedServices(kube, namespace, vm, log)
        self.mesh_tls("service")  # a broken template fails here, at start-up, not in every sync

    def mesh_tls(self, service: str) -> tuple[str, str]:
        """(identity, serverName) with the templates filled in."""
        values = {"vm": self.vm, "namespace": self.namespace, "service": service}
        try:
            return self.identity.format(**values), self.server_name.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"externalworkload identity {self.identity!r} / server_name {self.server_name!r}: "
                             f"only {{vm}}, {{namespace}} and {{service}} can be filled in ({exc!r})") from exc

    async def sync(self, registrations: Collection[Registration], *, terminating: bool = False) -> None:
        lease = await self._heartbeat.ensure()
        wanted: dict[str, tuple[Body, tuple[bool, str, str]]] = {}
        for service, group in _by_service(registrations).items():
            svc = await self._services.ensure(service, {(r.protocol, r.port) for r in group},
                                              selector={LABEL_APP: service})
            identity, server_name = self.mesh_tls(service)
            for family, regs in itertools.groupby(group, key=lambda r: r.family):
                family_regs = list(regs)
                body = build_external_workload(svc, self.vm, self.namespace, family_regs, lease,
                                               identity=identity, server_name=server_name)
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
            return await self._kube.list(EXTERNAL_WORKLOADS, self.namespace, own_objects_selector(self.vm))
        except NotFound as exc:  # the collection itself is missing: the CRD is not installed
            raise ClusterError(
                f"the cluster does not serve {EXTERNAL_WORKLOADS.qualified}/{EXTERNAL_WORKLOADS.version}:"
                " install Linkerd's CRDs, or choose another backend") from exc

    async def _put(self, name: str, body: Body, current: Body | None) -> Body:
        """Create or update the workload; returns it as the cluster holds it (the status needs its resourceVersion)."""
        log = self._log.bind(service=body["metadata"]["labels"][LABEL_APP], object=f"{KIND}/{name}")
        ips = [w["ip"] for w in body["spec"]["workloadIPs"]]
        for _ in range(WRITE_ATTEMPTS):
            if current is None:
                try:
                    created = await self._kube.create(EXTERNAL_WORKLOADS, self.namespace, body)
                    log.info(f"{KIND} created", addresses=ips, identity=body["spec"]["meshTLS"]["identity"])
                    return created
                except Conflict as exc:
                    if not exc.already_exists:
                        raise
                    current = await self._kube.get(EXTERNAL_WORKLOADS, self.namespace, name)
                    _check_ours(current, self.vm, name)
            if not workload_differs(current, body):
                return current
            merged = {**current, "metadata": {**current["metadata"], **_owned_metadata(current, body)},
                      "spec": body["spec"]}
            try:
                updated = await self._kube.replace(EXTERNAL_WORKLOADS, self.namespace, name, merged)
                log.info(f"{KIND} updated", addresses=ips, identity=body["spec"]["meshTLS"]["identity"])
                return updated
            except Conflict:
                current = await self._kube.get(EXTERNAL_WORKLOADS, self.namespace, name)
            except NotFound:
                current = None
        raise Conflict(f"{KIND} {name} kept changing under us ({WRITE_ATTEMPTS} attempts); will retry")

    async def _put_health(self, current: Body, health: tuple[bool, str, str]) -> None:
        """The Ready condition through the status subresource, conditional on the resourceVersion."""
        healthy, reason, message = health
        name = current["metadata"]["name"]
        for _ in range(WRITE_ATTEMPTS):
            now = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)
            conditions = set_condition((current.get("status") or {}).get("conditions"), CONDITION_READY,
                                       healthy=healthy, reason=reason, message=message, now=now)
            if conditions is None:
                return
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "status": {"conditions": conditions}}
            try:
                await self._kube.patch_status(EXTERNAL_WORKLOADS, self.namespace, name, patch)
                self._log.info(f"{KIND} readiness set", object=f"{KIND}/{name}", ready=healthy, reason=reason)
                return
            except Conflict:
                current = await self._kube.get(EXTERNAL_WORKLOADS, self.namespace, name)
        raise Conflict(f"{KIND} {name} status kept changing under us ({WRITE_ATTEMPTS} attempts); will retry")

    async def _delete(self, name: str) -> None:
        try:
            await self._kube.delete(EXTERNAL_WORKLOADS, self.namespace, name)
            self._log.info(f"{KIND} deleted", object=f"{KIND}/{name}")
        except NotFound:
            pass


def _owned_metadata(current: Body, desired: Body) -> Body:
    """The metadata the agent owns (its labels merged over others', the owner), keeping the rest."""
    cur, want = current["metadata"], desired["metadata"]
    return {"labels": {**(cur.get("labels") or {}), **want["labels"]}, "ownerReferences": want["ownerReferences"]}


def _check_ours(current: Body, vm: str, name: str) -> None:
    """An object of our name carrying either of our labels is ours from before (relabelled by someone): take it
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
