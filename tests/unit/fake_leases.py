"""An in-memory stand-in for the Lease API, for sequencing election and reaping on a fake clock.

Only what the reaper and the slots call, with the apiserver's optimistic-concurrency rules: creates of an
existing name and writes or deletes carrying a stale resourceVersion fail with 409. A behaviour is proven
against the real apiserver in tests/integration; this only orders the steps.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.resources import Resource
from tests.unit.fakes import FakeClock

__all__ = ["FakeClock", "FakeLeases"]

Body = dict[str, Any]


class FakeLeases:
    def __init__(self) -> None:
        self.objects: dict[str, Body] = {}
        self._versions = itertools.count(1)
        self.fail_with: ClusterError | None = None  # every call raises this while set
        self.calls: list[str] = []
        # While set, a write is stored at once but its reply waits for this event (a slow reply: the apiserver
        # has the write, the client does not know yet); `stored` is set at each such write.
        self.reply_gate: asyncio.Event | None = None
        self.stored = asyncio.Event()

    def _check(self, verb: str) -> None:
        self.calls.append(verb)
        if self.fail_with is not None:
            raise self.fail_with

    def _stored(self, body: Body) -> Body:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}-{body['metadata']['resourceVersion']}")
        self.objects[body["metadata"]["name"]] = body
        return copy.deepcopy(body)

    async def list(self, resource: Resource, namespace: str, label_selector: str = "") -> list[Body]:
        self._check("list")
        keys = [k for k in label_selector.split(",") if k]
        return [copy.deepcopy(o) for o in self.objects.values()
                if all(k.split("=")[0] in (o["metadata"].get("labels") or {}) for k in keys)]

    async def get(self, resource: Resource, namespace: str, name: str) -> Body:
        self._check("get")
        if name not in self.objects:
            raise NotFound(f"{name} not found")
        return copy.deepcopy(self.objects[name])

    async def create(self, resource: Resource, namespace: str, body: Body) -> Body:
        self._check("create")
        if body["metadata"]["name"] in self.objects:
            raise Conflict("already exists", status=409, reason="AlreadyExists")
        return await self._reply(self._stored(body))

    async def _reply(self, stored: Body) -> Body:
        if self.reply_gate is not None:
            self.stored.set()
            await self.reply_gate.wait()
        return stored

    async def replace(self, resource: Resource, namespace: str, name: str, body: Body) -> Body:
        self._check("replace")
        current = self.objects.get(name)
        if current is None:
            raise NotFound(f"{name} not found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified", status=409, reason="Conflict")
        body = copy.deepcopy(body)
        body["metadata"]["uid"] = current["metadata"]["uid"]
        return await self._reply(self._stored(body))

    async def delete(self, resource: Resource, namespace: str, name: str, *, resource_version: str = "",
                     uid: str = "") -> None:
        self._check("delete")
        current = self.objects.get(name)
        if current is None:
            raise NotFound(f"{name} not found")
        if resource_version and resource_version != current["metadata"]["resourceVersion"]:
            raise Conflict("precondition failed", status=409, reason="Conflict")
        del self.objects[name]

    def renew(self, name: str, stamp: str) -> Body:
        """What a live holder does: a new renewTime, a new resourceVersion."""
        lease = copy.deepcopy(self.objects[name])
        lease["spec"]["renewTime"] = stamp
        return self._stored(lease)
