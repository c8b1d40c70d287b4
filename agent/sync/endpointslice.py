"""Default backend: a selector-less Service per service, and one EndpointSlice per VM, service and family.

No two VMs write the same slice. The shared Service is only ever extended (a missing port is added with
an optimistic, resourceVersion-checked update) and never deleted here.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

import structlog

from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import (
    LABEL_SLICE_MANAGED_BY,
    LABEL_VM,
    MANAGER,
    build_endpoint_slice,
    own_slices_selector,
    slice_differs,
    slice_name,
)
from agent.cluster.resources import ENDPOINT_SLICES, Resource
from agent.heartbeat import Heartbeat
from agent.state import Registration, group_by_service
from agent.sync.services import SharedServices

Body = dict[str, Any]


class EndpointSliceBackend:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, heartbeat: Heartbeat,
                 log: structlog.typing.FilteringBoundLogger) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._heartbeat = heartbeat
        self._log = log
        self._services = SharedServices(kube, namespace, vm, log)

    async def sync(self, registrations: Collection[Registration], *, terminating: bool = False) -> None:
        lease = await self._heartbeat.ensure()  # the VM's heartbeat exists even with nothing to register
        wanted: dict[str, Body] = {}
        for service, group in group_by_service(registrations).items():
            svc = await self._services.ensure(service, {(r.protocol, r.port) for r in group})
            for family, regs in itertools.groupby(sorted(group, key=lambda r: r.family), key=lambda r: r.family):
                body = build_endpoint_slice(svc, self.vm, self.namespace, list(regs), lease, terminating=terminating)
                wanted[slice_name(service, self.vm, family)] = body
        current = {s["metadata"]["name"]: s for s in await self._own_slices()}
        for name, body in wanted.items():
            await self._put_slice(name, body, current.get(name))
        for name in current.keys() - wanted.keys():
            await self._delete_slice(name)

    @property
    def watched(self) -> tuple[Resource, str]:
        return ENDPOINT_SLICES, own_slices_selector(self.vm)

    def affected(self, kind: str, obj: Body) -> bool:
        return True  # the VM's slices are its own alone: any change by someone else is to be undone

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        await self.sync(registrations, terminating=True)

    async def remove_all(self) -> None:
        for s in await self._own_slices():
            await self._delete_slice(s["metadata"]["name"])

    async def _own_slices(self) -> list[Body]:
        return await self._kube.list(ENDPOINT_SLICES, self.namespace, own_slices_selector(self.vm))

    async def _put_slice(self, name: str, body: Body, current: Body | None) -> None:
        log = self._log.bind(service=body["metadata"]["labels"]["kubernetes.io/service-name"],
                             object=f"endpointslice/{name}")
        addresses = [a for e in body["endpoints"] for a in e["addresses"]]
        ready = all(e["conditions"]["ready"] for e in body["endpoints"])
        if current is None:
            try:
                await self._kube.create(ENDPOINT_SLICES, self.namespace, body)
                log.info("endpointslice created", addresses=addresses, ready=ready)
                return
            except Conflict as exc:
                if not exc.already_exists:
                    raise
                current = await self._kube.get(ENDPOINT_SLICES, self.namespace, name)
                labels = current["metadata"].get("labels") or {}
                if labels.get(LABEL_VM) != self.vm and labels.get(LABEL_SLICE_MANAGED_BY) != MANAGER:
                    raise ClusterError(
                        f"endpointslice {name} already exists and is not ours "
                        f"(managed-by {labels.get(LABEL_SLICE_MANAGED_BY)!r}); leaving it alone"
                    ) from exc
                # Ours from before, relabelled by someone: take it back below.
        if not slice_differs(current, body):
            return
        merged = dict(body, metadata={**body["metadata"],
                                      "resourceVersion": current["metadata"]["resourceVersion"]})
        await self._kube.replace(ENDPOINT_SLICES, self.namespace, name, merged)
        log.info("endpointslice updated", addresses=addresses, ready=ready)

    async def _delete_slice(self, name: str) -> None:
        try:
            await self._kube.delete(ENDPOINT_SLICES, self.namespace, name)
            self._log.info("endpointslice deleted", object=f"endpointslice/{name}")
        except NotFound:
            pass
