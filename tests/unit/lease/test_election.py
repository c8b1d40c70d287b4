"""client-go's election rules, written once (agent/lease/election.py), on a fake clock."""

from __future__ import annotations

import datetime
from typing import Any

from agent.lease import election
from tests.unit.fakes import FakeClock

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)


def lease(holder: str, version: str, duration: int = 15) -> dict[str, Any]:
    return {"metadata": {"name": "vmesh-vm-a", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": 2}}


def test_free_own_or_an_earlier_run_may_be_taken_at_once_anyone_else_only_after_observed_silence() -> None:
    assert election.free_for("", "me", lambda h: False)
    assert election.free_for("me", "me", lambda h: False)
    assert election.free_for("me-before", "me", lambda h: h == "me-before")
    assert not election.free_for("clone", "me", lambda h: False)


def looked_expired(observer: election.Observer, current: dict[str, Any]) -> bool:
    """One look, as the heartbeat and the slots take it: observe, then judge that observation."""
    seen, _ = observer.observe(current)
    return observer.expired(seen, current)


def test_a_first_sight_and_every_change_restart_the_silence_and_a_new_holder_is_a_first_sight() -> None:
    clock = FakeClock()
    observer = election.Observer(clock)
    assert observer.observe(lease("clone", "1"))[1] is election.Sight.FIRST
    clock.advance(15)
    assert not looked_expired(observer, lease("clone", "1")), "silent for exactly its duration: not yet"
    seen, sight = observer.observe(lease("clone", "2"))
    assert sight is election.Sight.RENEWED and seen.renewals == 1
    clock.advance(15.1)
    assert looked_expired(observer, lease("clone", "2"))
    assert observer.observe(lease("other", "3"))[1] is election.Sight.FIRST
    assert not looked_expired(observer, lease("other", "3"))
    observer.forget("vmesh-vm-a")
    assert observer.get("vmesh-vm-a") is None


def test_expired_judges_the_observation_just_made_and_observes_nothing() -> None:
    """The heartbeat and the slots observe a Lease once per look and then judge that observation."""
    clock = FakeClock()
    observer = election.Observer(clock)
    seen, _ = observer.observe(lease("clone", "1"))
    clock.advance(15.1)
    assert observer.expired(seen, lease("clone", "1"))
    # A renewal the caller has not observed yet is not observed by expired() either: the caller's look decides.
    assert observer.expired(seen, lease("clone", "2"))
    assert observer.get("vmesh-vm-a") == election.Observation("clone", "1", 1000.0)
    assert not observer.expired(seen, lease("clone", "1", duration=30))
    assert observer.expired(seen, lease("clone", "1", duration=30), cap=10)
    assert not observer.expired(seen, lease("clone", "1", duration=0), default=16)


def test_an_endless_duration_is_waited_out_only_up_to_the_cap() -> None:
    clock = FakeClock()
    observer = election.Observer(clock)
    squatted = lease("thief", "1", duration=2147483647)
    seen, _ = observer.observe(squatted)
    clock.advance(301)
    assert not observer.expired(seen, squatted)
    assert observer.expired(seen, squatted, cap=300)


def test_taking_from_another_holder_counts_a_transition_and_renewing_does_not() -> None:
    taken = election.claimed(lease("dead", "7"), "me", 20, NOW)
    assert taken["spec"]["holderIdentity"] == "me" and taken["spec"]["leaseDurationSeconds"] == 20
    assert taken["spec"]["leaseTransitions"] == 3 and taken["spec"]["acquireTime"] == taken["spec"]["renewTime"]
    assert taken["metadata"]["resourceVersion"] == "7", "the version read: a renewal meanwhile wins with a 409"
    renewed = election.claimed(lease("me", "8"), "me", 20, NOW + datetime.timedelta(seconds=5))
    assert renewed["spec"]["leaseTransitions"] == 2 and "acquireTime" not in renewed["spec"]
