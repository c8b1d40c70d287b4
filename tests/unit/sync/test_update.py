"""The one conflict-safe write path (agent/sync/update.py), sequenced with a fake API."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cluster.errors import ClusterError, Conflict
from agent.cluster.resources import ENDPOINT_SLICES
from agent.sync.update import Change, Delete, PatchStatus, Put, update
from tests.unit.fakes import FakeApi

Body = dict[str, Any]


def racing(races: int, *, exists: bool = True) -> FakeApi:
    """One object `x` that somebody else writes `races` times, right before each of our writes."""
    api = FakeApi()
    if exists:
        api.put({"metadata": {"name": "x"}, "data": 0})
    somebody_writes_first(api, races)
    return api


def somebody_writes_first(api: FakeApi, times: int) -> None:
    """Before each of the next `times` writes, somebody else writes `x`: `data` becomes minus its version."""
    left = [times]

    def race(verb: str) -> None:
        if left[0]:
            left[0] -= 1
            theirs = api.put(api.objects.get("x") or {"metadata": {"name": "x"}})
            api.objects["x"]["data"] = -int(theirs["metadata"]["resourceVersion"])

    api.before_write = race


def current(api: FakeApi) -> Body | None:
    return api.objects.get("x")


async def no_sleep(delay: float) -> None:
    return None


def increment(found: Body | None) -> Change:
    """Read-modify-write: data + 1 of what was read."""
    assert found is not None
    return Put({**found, "data": found["data"] + 1})


async def test_a_conflict_reads_again_and_decides_on_what_is_there_now() -> None:
    api = racing(races=2)
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", increment, current=current(api), sleep=no_sleep)  # type: ignore[arg-type]
    assert outcome.verb == "updated"
    assert outcome.obj is not None and outcome.obj["data"] == -3 + 1, "built on the version read last"
    assert api.writes == [("replace", "1"), ("replace", "2"), ("replace", "3")], "each write at the version read"


async def test_the_retries_are_bounded_and_say_so() -> None:
    api = racing(races=100)
    with pytest.raises(Conflict, match=r"endpointslices.discovery.k8s.io/x kept changing under us \(4 attempts\)"):
        await update(api, ENDPOINT_SLICES, "vm", "x", increment, current=current(api), attempts=4, sleep=no_sleep)  # type: ignore[arg-type]
    assert len(api.writes) == 4


async def test_a_create_that_finds_the_object_decides_again_on_it() -> None:
    api = racing(races=1, exists=False)
    seen: list[Body | None] = []

    def decide(found: Body | None) -> Change:
        seen.append(found)
        return Put({"metadata": {"name": "x"}, "data": 7}) if found is None or found["data"] != 7 else None

    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", decide, current=None, sleep=no_sleep)  # type: ignore[arg-type]
    assert [s is None for s in seen] == [True, False]
    assert [verb for verb, _ in api.writes] == ["create", "replace"]
    assert outcome.verb == "updated"


async def test_nothing_to_change_writes_nothing_and_decide_may_refuse() -> None:
    api = racing(races=0)
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: None, current=current(api))  # type: ignore[arg-type]
    assert (outcome.verb, api.writes) == ("unchanged", [])

    def refuse(found: Body | None) -> Change:
        raise ClusterError("not ours")

    with pytest.raises(ClusterError, match="not ours"):
        await update(api, ENDPOINT_SLICES, "vm", "x", refuse, current=current(api))  # type: ignore[arg-type]
    assert api.writes == []


async def test_delete_and_status_are_conditional_on_the_version_read() -> None:
    api = racing(races=1)
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: PatchStatus({"ok": True}),  # type: ignore[arg-type]
                           current=current(api), sleep=no_sleep)
    assert outcome.verb == "status set"
    assert api.writes == [("status", "1"), ("status", "2")]
    somebody_writes_first(api, 1)
    api.writes = []
    outcome = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: Delete(), current=current(api),  # type: ignore[arg-type]
                           sleep=no_sleep)
    assert (outcome.verb, outcome.obj, current(api)) == ("deleted", None, None)
    assert api.writes == [("delete", "3"), ("delete", "4")], "the status write got version 3"
    gone = await update(api, ENDPOINT_SLICES, "vm", "x", lambda found: Delete(), current=None)  # type: ignore[arg-type]
    assert gone.verb == "unchanged", "already gone counts as done"
