"""The one conflict-safe write path (agent/sync/update.py), sequenced with a fake API."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.resources import ENDPOINT_SLICES
from agent.sync.update import Change, Delete, PatchStatus, Put, update

Body = dict[str, Any]


class RacingApi:
    """One object that somebody else changes `races` times, right before each of our writes."""

    def __init__(self, races: int, *, exists: bool = True) -> None:
        self.races = races
        self.version = 1
        self.obj: Body | None = {"metadata": {"name": "x", "resourceVersion": "1"}, "data": 0} if exists else None
        self.writes: list[tuple[str, str]] = []  # (verb, resourceVersion sent)

    def _race(self) -> bool:
        if self.races:
            self.races -= 1
            self.version += 1
            self.obj = {"metadata": {"name": "x", "resourceVersion": str(self.version)}, "data": -self.version}
            return True
        return False

    async def get(self, resource: object, namespace: str, name: str) -> Body:
        if self.obj is None:
            raise NotFound("not found", status=404)
        return self.obj

    async def create(self, resource: object, namespace: str, body: Body) -> Body:
        self.writes.append(("create", ""))
        if self._race() or self.obj is not None:
            raise Conflict("already exists", status=409, reason="AlreadyExists")
        self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return self.obj

    async def replace(self, resource: object, namespace: str, name: str, body: Body) -> Body:
        self.writes.append(("replace", body["metadata"]["resourceVersion"]))
        assert self.obj is not None
        if self._race() or body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified", status=409, reason="Conflict")
        self.version += 1
        self.obj = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return self.obj

    async def delete(self, resource: object, namespace: str, name: str, *, resource_version: str = "") -> None:
        self.writes.append(("delete", resource_version))
        if self._race():
            raise Conflict("precondition failed", status=409, reason="Conflict")
        self.obj = None

    async def patch_status(self, resource: object, namespace: str, name: str, patch: Body) -> Body:
        self.writes.append(("status", patch["metadata"]["resourceVersion"]))
        if self._race():
            raise Conflict("the object has been modified", status=409, reason="Conflict")
        assert self.obj is not None
        self.obj = {**self.obj, "status": patch["status"]}
        return self.obj


async def no_sleep(delay: float) -> None:
    return None


def increment(found: Body | None) -> Change:
    """Read-modify-write: data + 1 of what was read."""
    assert found is not None
    return Put({**found, "data": found["data"] + 1})


async def test_a_conflict_reads_again_and_decides_on_what_is_there_now() -> None:
    api = RacingApi(races=2)
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", increment, current=api.obj, sleep=no_sleep)  # type: ignore[arg-type]
    assert outcome.verb == "updated"
    assert outcome.obj is not None and outcome.obj["data"] == -3 + 1, "built on the version read last"
    assert api.writes == [("replace", "1"), ("replace", "2"), ("replace", "3")], "each write at the version read"


async def test_the_retries_are_bounded_and_say_so() -> None:
    api = RacingApi(races=100)
    with pytest.raises(Conflict, match=r"endpointslices.discovery.k8s.io/x kept changing under us \(4 attempts\)"):
        await update(api, ENDPOINT_SLICES, "vm", "x", increment, current=api.obj, attempts=4, sleep=no_sleep)  # type: ignore[arg-type]
    assert len(api.writes) == 4


async def test_a_create_that_finds_the_object_decides_again_on_it() -> None:
    api = RacingApi(races=1, exists=False)
    seen: list[Body | None] = []

    def decide(found: Body | None) -> Change:
        seen.append(found)
        return Put({"metadata": {"name": "x"}, "data": 7}) if found is None or found["data"] != 7 else None

    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", decide, current=None, sleep=no_sleep)  # type: ignore[arg-type]
    assert [s is None for s in seen] == [True, False]
    assert [verb for verb, _ in api.writes] == ["create", "replace"]
    assert outcome.verb == "updated"


async def test_nothing_to_change_writes_nothing_and_decide_may_refuse() -> None:
    api = RacingApi(races=0)
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: None, current=api.obj)  # type: ignore[arg-type]
    assert (outcome.verb, api.writes) == ("unchanged", [])

    def refuse(found: Body | None) -> Change:
        raise ClusterError("not ours")

    with pytest.raises(ClusterError, match="not ours"):
        await update(api, ENDPOINT_SLICES, "vm", "x", refuse, current=api.obj)  # type: ignore[arg-type]
    assert api.writes == []


async def test_delete_and_status_are_conditional_on_the_version_read() -> None:
    api = RacingApi(races=1)
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: PatchStatus({"ok": True}),  # type: ignore[arg-type]
                           current=api.obj, sleep=no_sleep)
    assert outcome.verb == "status set"
    assert api.writes == [("status", "1"), ("status", "2")]
    api.races, api.writes = 1, []
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: Delete(), current=api.obj,  # type: ignore[arg-type]
                           sleep=no_sleep)
    assert (outcome.verb, outcome.obj, api.obj) == ("deleted", None, None)
    assert api.writes == [("delete", "2"), ("delete", "3")]
    gone = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: Delete(), current=None)  # type: ignore[arg-type]
    assert gone.verb == "unchanged", "already gone counts as done"
