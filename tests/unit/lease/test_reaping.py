"""Reaping's rules on a fake clock: observed renewals, the gap rule, the own-renewal view, the brake, slots."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

from agent.cluster.errors import Forbidden, Unavailable
from agent.cluster.kube import KubeClient
from agent.lease.heartbeat import Heartbeat
from agent.lease.reaper import CHECK_EVERY, IDLE_CHECK, SMALL_FLEET, LeaseObserver, ReapBrake, Reaper
from agent.lease.slots import MAX_SLOT_DURATION, ReaperSlots, SlotObserver, build_slot, slot_name
from agent.logs import get_logger
from agent.sync.backends.backend import Backend, remove_shared_entries
from tests.unit.fakes import FakeApi, FakeClock

Body = dict[str, Any]
OWN = "vmesh-me"
DURATION, GRACE = 15.0, 5.0


def lease(vm: str, renew: str, version: str = "1", duration: float = DURATION) -> Body:
    return {"metadata": {"name": f"vmesh-{vm}", "resourceVersion": version,
                         "labels": {"vmesh.dev/vm": vm, "app.kubernetes.io/managed-by": "vmesh-agent"}},
            "spec": {"renewTime": renew, "leaseDurationSeconds": duration, "holderIdentity": vm}}


def names(expired: list[tuple[str, Any]]) -> list[str]:
    return sorted(name for name, _ in expired)


# -- LeaseObserver ------------------------------------------------------------------------------------------

def test_a_lease_expires_only_after_its_duration_plus_grace_of_observed_silence() -> None:
    clock = FakeClock()
    obs = LeaseObserver(OWN, GRACE, clock)
    obs.replace_all([lease("a", "t0"), lease("b", "t0"), lease("me", "t0")])
    for step in range(1, 5):  # b renews every 5 s; a never does
        clock.advance(5)
        obs.observe(lease("b", f"t{step}", str(step + 1)))
    assert names(obs.expired()) == []  # 20 s of silence is not *more* than duration + grace
    clock.advance(0.1)
    assert names(obs.expired()) == ["vmesh-a"]


def test_the_own_lease_is_never_expired_and_a_lease_without_vm_label_never_is() -> None:
    clock = FakeClock()
    obs = LeaseObserver(OWN, GRACE, clock)
    slot = {"metadata": {"name": "vmesh-reaper-0", "resourceVersion": "1", "labels": {}},
            "spec": {"renewTime": "t0", "leaseDurationSeconds": 15}}
    obs.replace_all([lease("me", "t0"), slot])
    clock.advance(100)
    assert obs.expired() == []
    assert obs.fleet() == 1


def test_a_gap_restarts_every_observation_clock() -> None:
    """The outage that reaped 85 of 100 VMs: after a gap nothing is judged on pre-gap observations."""
    clock = FakeClock()
    obs = LeaseObserver(OWN, GRACE, clock)
    obs.replace_all([lease("a", "t0"), lease("me", "t0")])
    clock.advance(30)  # the apiserver is down: nobody renews, nothing is seen
    obs.replace_all([lease("a", "t0"), lease("me", "t0")])  # it is back: the reaper lists again
    assert obs.expired() == []
    clock.advance(DURATION + GRACE)
    assert obs.expired() == []
    obs.observe(lease("a", "t1", "2"))  # a renews once it can
    clock.advance(DURATION + GRACE + 0.1)
    assert names(obs.expired()) == ["vmesh-a"]  # and silence after the gap still counts


def test_the_view_ages_only_as_far_as_the_own_renewals_come_back_through_it() -> None:
    """A watch that stalls (packets dropped) shows nobody renewing: it must age nothing."""
    clock = FakeClock()
    obs = LeaseObserver(OWN, GRACE, clock)
    obs.replace_all([lease("a", "t0"), lease("me", "t0")])
    for step in range(1, 4):
        clock.advance(5)
        obs.observe(lease("me", f"t{step}", str(step + 1)))
        obs.observe(lease("a", f"t{step}", str(step + 10)))
    clock.advance(60)  # the stream stalls: neither a nor this agent's own renewals arrive
    assert obs.expired(slack=7.5) == []
    assert names(obs.expired()) == ["vmesh-a"]  # what the clock alone would have done
    obs.observe(lease("me", "t9", "30"))  # the stream resumes with our renewal: a said nothing since t3
    assert names(obs.expired(slack=7.5)) == ["vmesh-a"]


# -- ReapBrake ----------------------------------------------------------------------------------------------

def test_the_brake_holds_when_more_than_half_expire_at_once_but_one_vm_alone_is_always_reaped() -> None:
    brake = ReapBrake(0.5, FakeClock())
    assert not brake.holds(stale=1, fleet=2, window=15)  # a two-VM fleet loses one
    assert not brake.holds(stale=25, fleet=100, window=15)
    assert not brake.holds(stale=50, fleet=100, window=15)  # half is not more than half
    assert brake.holds(stale=51, fleet=100, window=15)
    assert brake.holds(stale=2, fleet=3, window=15)  # small fleets: two of three at once is suspicious
    assert not ReapBrake(1.0, FakeClock()).holds(stale=99, fleet=100, window=15)  # 1 turns it off


async def test_the_brake_holds_from_the_first_expiry_when_many_go_silent_within_one_renewal() -> None:
    """VMs cut off together renewed last at slightly different moments: they expire one by one, and the
    first must not be reaped alone before the others count."""
    api, clock = FakeApi(), FakeClock()
    reaper, removed = reaper_on(api, clock)
    silent = [api.put(lease(f"vm{i}", "t0")) for i in range(3)]
    reaper.observer.replace_all([*silent, lease("me", "t0"), lease("live", "t0")])
    clock.advance(1)
    for renewed in (api.renew("vmesh-vm1", "t1"), api.renew("vmesh-vm2", "t1")):
        reaper.observer.observe(renewed)  # their last renewal, a second after vm0's
    clock.advance(DURATION + GRACE - 0.5)  # vm0 is past duration + grace; vm1 and vm2 not quite yet
    reaper.observer.observe(lease("live", "t1", "77"))
    assert names(reaper.observer.expired()) == ["vmesh-vm0"]
    assert await reaper.reap_expired() == 0
    assert reaper.braking.startswith("3 of 5")
    assert removed == []


def test_the_brake_counts_what_was_reaped_within_one_lease_duration() -> None:
    clock = FakeClock()
    brake = ReapBrake(0.5, clock)
    for _ in range(30):
        brake.reaped()  # 30 of 100 reaped just now, 70 left in view
    assert brake.holds(stale=30, fleet=70, window=15)  # another 30 silent now: 60 of 100 within one duration
    clock.advance(15.1)
    assert not brake.holds(stale=30, fleet=70, window=15)  # the first batch is older than one duration


# -- Reaper with a fake API ---------------------------------------------------------------------------------

class StubHeartbeat:
    interval = 5.0
    consecutive_failures = 0
    held = True


class RemovedBackend:
    """A backend whose remove_all is recorded: the legacy shared Endpoints one (owned_by_lease False) unless told."""

    def __init__(self, removed: list[str], vm: str, owned_by_lease: bool = False) -> None:
        self.removed, self.vm, self.owned_by_lease = removed, vm, owned_by_lease

    async def remove_all(self) -> None:
        self.removed.append(self.vm)


def reaper_on(api: FakeApi, clock: FakeClock, heartbeat: StubHeartbeat | None = None,
              fraction: float = 0.5, owned_by_lease: bool = False, *, limit: float = 0.0) -> tuple[Reaper, list[str]]:
    removed: list[str] = []

    async def after_reap(vm: str) -> None:
        await remove_shared_entries(cast(Backend, RemovedBackend(removed, vm, owned_by_lease)))

    reaper = Reaper(cast(KubeClient, api), "vm", OWN, grace=GRACE, brake_fraction=fraction, brake_limit=limit,
                    heartbeat=cast(Heartbeat, heartbeat) if heartbeat else None, after_reap=after_reap,
                    log=get_logger(vm="me"), clock=clock)
    return reaper, removed


def test_an_idle_reaper_looks_once_a_second_and_four_times_near_an_expiry() -> None:
    """Idle CPU (bench/startup): no other VM, or none near expiry, is one look a second; from IDLE_CHECK before a
    Lease would expire, and after (a reap to retry, the brake holding), every CHECK_EVERY as before."""
    api, clock = FakeApi(), FakeClock()
    reaper, _ = reaper_on(api, clock)
    reaper.observer.replace_all([lease("me", "t0")])
    assert reaper.check_delay() == IDLE_CHECK  # alone: its own Lease never expires
    reaper.observer.observe(lease("a", "t0"))
    assert reaper.check_delay() == IDLE_CHECK
    clock.advance(DURATION + GRACE - IDLE_CHECK - 0.01)
    assert reaper.check_delay() == IDLE_CHECK
    clock.advance(0.02)
    assert reaper.check_delay() == CHECK_EVERY
    clock.advance(10)  # long expired (not reaped yet): still looked at every CHECK_EVERY
    assert reaper.check_delay() == CHECK_EVERY
    reaper.observer.observe(lease("a", "t1", "2"))  # renewed after all
    assert reaper.check_delay() == IDLE_CHECK


async def test_a_reaper_whose_own_heartbeat_fails_reaps_nothing_and_starts_over_when_back() -> None:
    api, clock, beat = FakeApi(), FakeClock(), StubHeartbeat()
    dead = api.put(lease("dead", "t0"))
    reaper, removed = reaper_on(api, clock, beat)
    reaper.observer.replace_all([dead, lease("me", "t0")])
    beat.consecutive_failures = 1
    for _ in range(10):
        clock.advance(5)
        reaper.observer.observe(lease("me", f"t{clock.now}", str(clock.now)))
        assert await reaper.reap_expired() == 0
    beat.consecutive_failures = 0
    clock.advance(DURATION + GRACE - 1)
    reaper.observer.observe(lease("me", "later", "999"))
    assert await reaper.reap_expired() == 0, "a full period of silence after the recovery is needed"
    clock.advance(1.1)
    reaper.observer.observe(lease("me", "later2", "1000"))
    assert await reaper.reap_expired() == 1
    assert removed == ["dead"]
    assert "vmesh-dead" not in api.objects


async def test_a_reaper_deletes_only_the_lease_of_a_vm_whose_objects_the_lease_owns() -> None:
    # Under the isolation policy no VM may delete another VM's slices: the garbage collector removes them.
    api, clock = FakeApi(), FakeClock()
    dead = api.put(lease("dead", "t0"))
    reaper, removed = reaper_on(api, clock, owned_by_lease=True)
    reaper.observer.replace_all([dead, lease("me", "t0")])
    clock.advance(DURATION + GRACE + 1)
    reaper.observer.observe(lease("me", "t1", "50"))
    assert await reaper.reap_expired() == 1
    assert "vmesh-dead" not in api.objects
    assert removed == [], "the dead VM's own objects are the garbage collector's to delete"


async def test_the_brake_reaps_nothing_says_why_and_lifts_when_renewals_resume() -> None:
    api, clock = FakeApi(), FakeClock()
    leases = [api.put(lease(f"vm{i}", "t0")) for i in range(5)]
    reaper, removed = reaper_on(api, clock)
    reaper.observer.replace_all([*leases, api.put(lease("me", "t0"))])
    clock.advance(DURATION + GRACE + 1)  # five of six go silent at once
    assert await reaper.reap_expired() == 0
    assert reaper.braking.startswith("5 of 6 VMs stopped renewing")
    assert removed == []
    for i in range(4):  # they were alive after all: four renew
        reaper.observer.observe(api.renew(f"vmesh-vm{i}", "t1"))
    # One of six is no mass expiry: the brake lifts. Releasing is a gap, as the VMs resume one by one: the fifth
    # gets a full lease duration + grace again before it is judged ...
    assert await reaper.reap_expired() == 0
    assert reaper.braking == ""
    clock.advance(DURATION)
    for name in ("vm0", "vm1", "vm2", "vm3", "me"):
        reaper.observer.observe(api.renew(f"vmesh-{name}", "t2"))
    assert await reaper.reap_expired() == 0
    assert removed == []
    # ... and is reaped once it has stayed silent that long.
    clock.advance(GRACE + 1)
    for name in ("vm0", "vm1", "vm2", "vm3", "me"):
        reaper.observer.observe(api.renew(f"vmesh-{name}", "t3"))
    assert await reaper.reap_expired() == 1
    assert removed == ["vm4"]


async def brake_held_for(seconds: float, reaper: Reaper, api: FakeApi, clock: FakeClock,
                         beat: StubHeartbeat | None = None) -> int:
    """Advance the clock second by second, this reaper renewing its own Lease, the others silent; reaped so far."""
    reaped = 0
    for _ in range(int(seconds)):
        clock.advance(1)
        reaper.observer.observe(api.renew(OWN, f"own{clock.now}"))
        if beat is None or not beat.consecutive_failures:
            reaped += await reaper.reap_expired()
        else:
            assert await reaper.reap_expired() == 0
    return reaped


async def test_in_a_small_fleet_the_brake_gives_way_after_its_limit_of_the_reapers_own_renewals() -> None:
    """Issue 20: in a fleet of three, two VMs dying together engaged the brake with no time limit, their endpoints
    ready for ever. A reaper that keeps renewing its own Lease reaps them after `brake_limit`."""
    api, clock, beat = FakeApi(), FakeClock(), StubHeartbeat()
    leases = [api.put(lease(f"vm{i}", "t0")) for i in range(2)]
    reaper, removed = reaper_on(api, clock, beat, limit=60)
    reaper.observer.replace_all([*leases, api.put(lease("me", "t0"))])
    assert await brake_held_for(DURATION + GRACE + 1, reaper, api, clock) == 0
    assert reaper.braking.startswith("2 of 3 VMs stopped renewing")
    assert reaper.braking.endswith("or for 60 s at most in a fleet this small")
    assert await brake_held_for(59, reaper, api, clock) == 0, "the brake holds for its limit"
    assert removed == [] and reaper.braking
    # This reaper's own heartbeat failing restarts everything, the limit's count too.
    beat.consecutive_failures = 1
    await brake_held_for(3, reaper, api, clock, beat)
    beat.consecutive_failures = 0
    assert await brake_held_for(DURATION + GRACE + 60, reaper, api, clock) == 0
    assert await brake_held_for(2, reaper, api, clock) == 2
    assert reaper.braking == ""
    assert sorted(api.objects) == ["vmesh-me"]
    # A later mass silence starts a new count: it does not inherit the spent one.
    more = [api.put(lease(f"later{i}", "t9")) for i in range(2)]
    for item in more:
        reaper.observer.observe(item)
    assert await brake_held_for(DURATION + GRACE + 30, reaper, api, clock) == 0
    assert reaper.braking


async def test_in_a_large_fleet_or_without_a_limit_or_a_heartbeat_the_brake_holds_until_renewals_resume() -> None:
    for fleet, limit, beat in ((SMALL_FLEET + 1, 60.0, StubHeartbeat()), (3, 0.0, StubHeartbeat()), (3, 60.0, None)):
        api, clock = FakeApi(), FakeClock()
        silent = [api.put(lease(f"vm{i}", "t0")) for i in range(fleet - 1 - (fleet - 1) // 3)]
        alive = [f"vmesh-ok{i}" for i in range((fleet - 1) // 3)]
        reaper, removed = reaper_on(api, clock, beat, limit=limit)
        reaper.observer.replace_all([*silent, *(api.put(lease(n[6:], "t0")) for n in alive),
                                     api.put(lease("me", "t0"))])
        assert reaper.observer.fleet() == fleet
        for _ in range(300):
            for name in alive:
                reaper.observer.observe(api.renew(name, f"r{clock.now}"))
            assert await brake_held_for(1, reaper, api, clock) == 0, (fleet, limit, beat)
        assert reaper.braking and removed == [], (fleet, limit, beat)


async def test_a_vm_renewing_just_after_the_brake_lifts_is_not_reaped() -> None:
    api, clock = FakeApi(), FakeClock()
    leases = [api.put(lease(f"vm{i}", "t0")) for i in range(5)]
    reaper, removed = reaper_on(api, clock)
    reaper.observer.replace_all([*leases, lease("me", "t0")])
    clock.advance(DURATION + GRACE + 1)  # a paused host: all five silent at once
    assert await reaper.reap_expired() == 0
    for i in range(4):  # resumed: four renew first ...
        reaper.observer.observe(api.renew(f"vmesh-vm{i}", "t1"))
    assert await reaper.reap_expired() == 0
    clock.advance(1)  # ... the fifth a second later
    reaper.observer.observe(api.renew("vmesh-vm4", "t1"))
    assert await reaper.reap_expired() == 0
    assert removed == []


async def test_failed_deletes_back_off_per_lease_and_a_403_says_reaping_is_off() -> None:
    api, clock = FakeApi(), FakeClock()
    dead = api.put(lease("dead", "t0"))
    reaper, _ = reaper_on(api, clock)
    reaper.observer.replace_all([dead, lease("me", "t0"), lease("other", "t0")])
    clock.advance(DURATION + GRACE + 1)
    reaper.observer.observe(lease("other", "t1", "50"))
    api.fail_with = Forbidden("cannot delete leases.coordination.k8s.io in namespace vm: grant it")
    assert await reaper.reap_expired() == 0
    assert reaper.problem.startswith("reaping is off: cannot delete leases")
    deletes = api.calls.count("delete")
    assert await reaper.reap_expired() == 0
    assert api.calls.count("delete") == deletes, "no retry before its backoff is over"
    api.fail_with = Unavailable("cannot reach the apiserver")
    clock.advance(60)
    reaper.observer.observe(lease("other", "t2", "51"))  # the other VM lives on
    assert await reaper.reap_expired() == 0
    assert api.calls.count("delete") == deletes + 1
    api.fail_with = None
    clock.advance(60)
    reaper.observer.observe(lease("other", "t3", "52"))
    assert await reaper.reap_expired() == 1
    assert reaper.problem == ""


# -- Reaper slots -------------------------------------------------------------------------------------------

def slots_for(api: FakeApi, identity: str, clock: FakeClock, slots: int = 2) -> ReaperSlots:
    return ReaperSlots(cast(KubeClient, api), "vm", identity, slots=slots, duration=DURATION, renew_interval=5,
                       check_interval=30, log=get_logger(vm=identity), clock=clock)


def test_a_slot_is_taken_only_when_free_own_or_observed_unchanged_for_its_duration() -> None:
    clock = FakeClock()
    obs = SlotObserver("me", clock)
    held: dict[str, Any] = {"metadata": {"name": "vmesh-reaper-0", "resourceVersion": "7"},
            "spec": {"holderIdentity": "other", "leaseDurationSeconds": DURATION}}
    assert not obs.takeable(held), "a first sight counts as a renewal"
    clock.advance(DURATION)
    assert not obs.takeable(held)
    clock.advance(0.1)
    assert obs.takeable(held)
    renewed = {**held, "metadata": {**held["metadata"], "resourceVersion": "8"}}
    assert not obs.takeable(renewed)
    assert obs.takeable({**held, "spec": {**held["spec"], "holderIdentity": ""}})  # let go
    assert obs.takeable({**held, "spec": {**held["spec"], "holderIdentity": "me"}})  # ours from before


def test_a_slot_written_with_an_endless_duration_is_taken_after_the_cap() -> None:
    """Issue 19: `leaseDurationSeconds: 2147483647` on every slot switched reaping off for good."""
    clock = FakeClock()
    obs = SlotObserver("me", clock)
    squatted = {"metadata": {"name": "vmesh-reaper-0", "resourceVersion": "3"},
                "spec": {"holderIdentity": "thief", "leaseDurationSeconds": 2147483647}}
    assert not obs.takeable(squatted)
    clock.advance(MAX_SLOT_DURATION)
    assert not obs.takeable(squatted)
    clock.advance(0.1)
    assert obs.takeable(squatted)


async def test_candidates_fill_distinct_slots_and_the_rest_stand_by() -> None:
    api, clock = FakeApi(), FakeClock()
    a, b, c = (slots_for(api, n, clock) for n in ("a", "b", "c"))
    assert await a._look()
    assert await b._look()
    assert not await c._look()
    assert {a.held, b.held} == {slot_name(0), slot_name(1)}
    assert c.held is None
    assert {o["spec"]["holderIdentity"] for o in api.objects.values()} == {"a", "b"}


async def test_a_dead_holders_slot_is_taken_after_its_duration_and_a_released_one_at_once() -> None:
    api, clock = FakeApi(), FakeClock()
    a, b, c = (slots_for(api, n, clock, slots=1) for n in ("a", "b", "c"))
    assert await a._look()
    assert not await b._look()
    clock.advance(DURATION + 0.1)  # a died: its slot was not renewed for a duration, as b observed it
    assert await b._look()
    slot = api.objects[slot_name(0)]
    assert slot["spec"]["holderIdentity"] == "b"
    assert slot["spec"]["leaseTransitions"] == 1
    await b.release()
    assert api.objects[slot_name(0)]["spec"]["holderIdentity"] == ""
    assert await c._look(), "a slot let go is taken at the next look, without waiting a duration"


async def test_of_two_candidates_taking_one_expired_slot_exactly_one_wins() -> None:
    api, clock = FakeApi(), FakeClock()
    api.put(build_slot(0, "vm", "dead", 15, datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)))
    b, c = slots_for(api, "b", clock, slots=1), slots_for(api, "c", clock, slots=1)
    assert not await b._look()
    assert not await c._look()
    clock.advance(DURATION + 0.1)
    results = await asyncio.gather(b._look(), c._look())
    assert sorted(results) == [False, True]


async def test_a_slot_taken_or_renewed_as_the_agent_stops_is_still_let_go() -> None:
    """CI: a stop cancelled the take of a slot after the apiserver had stored it; release() saw no slot, and a
    stopped agent held it until it expired. Same for a renewal: release() wrote over an older version (409)."""
    api, clock = FakeApi(), FakeClock()
    api.reply_gate = asyncio.Event()
    taker = slots_for(api, "a", clock, slots=1)
    look = asyncio.create_task(taker._look())
    await asyncio.wait_for(api.stored.wait(), 5)
    look.cancel()  # the agent stops while the reply is on its way
    api.reply_gate.set()
    await asyncio.gather(look, return_exceptions=True)
    await taker.release()
    assert api.objects[slot_name(0)]["spec"]["holderIdentity"] == ""

    api.reply_gate, api.stored = None, asyncio.Event()
    renewer = ReaperSlots(cast(KubeClient, api), "vm", "b", slots=1, duration=DURATION, renew_interval=0.01,
                          check_interval=30, log=get_logger(vm="b"), clock=clock)
    assert await renewer._look()
    api.reply_gate = asyncio.Event()
    keep = asyncio.create_task(renewer._keep())
    await asyncio.wait_for(api.stored.wait(), 5)
    keep.cancel()
    api.reply_gate.set()
    await asyncio.gather(keep, return_exceptions=True)
    api.reply_gate = None
    await renewer.release()
    assert api.objects[slot_name(0)]["spec"]["holderIdentity"] == ""


async def test_a_holder_that_cannot_renew_stops_reaping_within_its_renew_deadline() -> None:
    api = FakeApi()
    holder = ReaperSlots(cast(KubeClient, api), "vm", "a", slots=1, duration=0.3, renew_interval=0.05,
                         check_interval=0.05, log=get_logger(vm="a"))
    reaping = asyncio.Event()
    stopped = asyncio.Event()

    async def work() -> None:
        reaping.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = asyncio.create_task(holder.run(work))
    await asyncio.wait_for(reaping.wait(), 5)
    api.fail_with = Unavailable("the apiserver is gone")
    await asyncio.wait_for(stopped.wait(), 2)  # renew deadline: 2/3 of the 1 s (rounded up) duration
    assert holder.held is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
