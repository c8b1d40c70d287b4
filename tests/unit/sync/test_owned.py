"""The shared cycle of the per-VM object backends (agent/sync/backends/owned.py), sequenced with a fake API: what is
deleted, and when."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from agent.cluster.errors import Forbidden, NotFound
from agent.cluster.objects import object_name
from agent.cluster.resources import SERVICES, Resource
from agent.logs import get_logger
from agent.state import Registration
from agent.sync.backends.endpointslice import EndpointSliceBackend
from agent.sync.failures import ServiceFailures

Body = dict[str, Any]
LEASE = {"metadata": {"name": "vmesh-a", "namespace": "vm", "uid": "uid-a"}}


class Beat:
    async def ensure(self) -> Body:
        return LEASE


class OneServiceRefused:
    """The cluster holds slices under the old names; creating or reading the Service `refused` is forbidden."""

    def __init__(self, refused: str, held: list[str]) -> None:
        self.refused = refused
        self.held: dict[str, Body] = {name: {"metadata": {"name": name, "resourceVersion": "1", "labels": {
            "vmesh.dev/vm": "a", "kubernetes.io/service-name": name.rsplit("-", 1)[0]}}} for name in held}
        self.deleted: list[str] = []
        self.created: list[str] = []

    async def list(self, resource: Resource, namespace: str, label_selector: str = "") -> list[Body]:
        return list(self.held.values())

    async def get(self, resource: Resource, namespace: str, name: str) -> Body:
        if resource == SERVICES and name == self.refused:
            raise Forbidden(f"cannot get services/{name}")
        if resource == SERVICES:
            return {"metadata": {"name": name, "resourceVersion": "1"},
                    "spec": {"ports": [{"name": "mysql", "port": 3306}]}}
        raise NotFound(name)

    async def create(self, resource: Resource, namespace: str, body: Body) -> Body:
        self.created.append(body["metadata"]["name"])
        return {**body, "metadata": {**body["metadata"], "resourceVersion": "2"}}

    async def delete(self, resource: Resource, namespace: str, name: str, *, resource_version: str = "") -> None:
        self.deleted.append(name)


async def test_an_old_object_goes_only_once_its_successor_exists() -> None:
    kube = OneServiceRefused("api", held=["api-a", "mysqldb-a"])
    backend = EndpointSliceBackend(kube, "vm", "a", Beat().ensure, get_logger())  # type: ignore[arg-type]
    registrations = [Registration(s, 3306, "mysql", ip_address("198.18.1.1")) for s in ("api", "mysqldb")]
    with pytest.raises(ServiceFailures) as failed:
        await backend.sync(registrations)
    assert list(failed.value.errors) == ["api"]
    assert kube.created == [object_name("mysqldb", "a", 4)], "mysqldb synced although api failed"
    assert kube.deleted == ["mysqldb-a"], "api's old slice stays while api has no new one: no gap"


async def test_removal_goes_on_past_an_object_that_cannot_be_deleted() -> None:
    kube = OneServiceRefused("", held=["api-a", "mysqldb-a", "web-a"])
    refused = kube.delete

    async def delete(resource: Resource, namespace: str, name: str, *, resource_version: str = "") -> None:
        if name == "mysqldb-a":
            raise Forbidden("cannot delete endpointslices")
        await refused(resource, namespace, name, resource_version=resource_version)

    kube.delete = delete  # type: ignore[method-assign]
    backend = EndpointSliceBackend(kube, "vm", "a", Beat().ensure, get_logger())  # type: ignore[arg-type]
    with pytest.raises(ServiceFailures) as failed:
        await backend.remove_all()
    assert list(failed.value.errors) == ["mysqldb"]
    assert kube.deleted == ["api-a", "web-a"]


async def test_removal_after_the_lease_takes_only_what_that_lease_owned() -> None:
    """After a stop for good has deleted its Lease, a clone may already have taken the VM's name: only the objects
    whose ownerReference names the deleted Lease's uid are removed, as the garbage collector would."""
    kube = OneServiceRefused("", held=["api-a", "mysqldb-a", "web-a"])
    for name, uid in (("api-a", "uid-a"), ("mysqldb-a", "uid-clone")):
        kube.held[name]["metadata"]["ownerReferences"] = [{"kind": "Lease", "name": "vmesh-a", "uid": uid}]
    backend = EndpointSliceBackend(kube, "vm", "a", Beat().ensure, get_logger())  # type: ignore[arg-type]
    assert await backend.remove_all("uid-a") == ["endpointslice/api-a"]
    assert kube.deleted == ["api-a"]


async def test_removal_after_the_lease_needs_no_list_after_a_sync() -> None:
    """A fleet stopping at once is short of requests: what the last sync (the marking) wrote is what there is."""
    kube = OneServiceRefused("", held=[])
    backend = EndpointSliceBackend(kube, "vm", "a", Beat().ensure, get_logger())  # type: ignore[arg-type]
    await backend.mark_terminating([Registration("mysqldb", 3306, "mysql", ip_address("198.18.1.1"))])
    listed = []

    async def list_(resource: Resource, namespace: str, label_selector: str = "") -> list[Body]:
        listed.append(resource)
        return []

    kube.list = list_  # type: ignore[method-assign]
    assert await backend.remove_all("uid-a") == [f"endpointslice/{object_name('mysqldb', 'a', 4)}"]
    assert listed == []
    assert await backend.remove_all("uid-a") == []  # nothing left that it knows of
