"""The heartbeat's pace (issue 21): the fleet's Lease writes under a budget, the interval moving gradually, every
write covering the interval that follows it. On an injected fleet size and a fake clock; the real fleet is in
tests/integration/test_heartbeat_pace.py."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

import pytest

from agent.cluster.kube import KubeClient
from agent.cluster.objects import ANNOTATION_FLEET_SIZE, build_lease
from agent.cluster.resources import Resource
from agent.config import ConfigError, parse_settings
from agent.lease.heartbeat import Heartbeat
from agent.lease.identity import HolderIdentity
from agent.lease.pace import LONGEST_DURATION, HeartbeatPace
from agent.lease.slots import ReaperSlots, build_slot, published_fleet
from agent.logs import get_logger
from tests.unit.fakes import FakeApi, FakeClock

Body = dict[str, Any]
ME = HolderIdentity("vm-a", "3d1219c7c4c5", "2d063c5bd7e1", 100)


class Fleet:
    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __call__(self) -> int | None:
        return self.size


def pace(fleet: Fleet, budget: float = 200.0, pinned: bool = False) -> HeartbeatPace:
    return HeartbeatPace(interval=5.0, lease_duration=15.0, budget=budget, fleet=fleet, pinned=lambda: pinned)


def settle(p: HeartbeatPace, steps: int = 20) -> list[float]:
    return [p.step() for _ in range(steps)]


def test_the_fleets_writes_stay_under_the_budget_never_faster_than_configured() -> None:
    fleet = Fleet()
    p = pace(fleet)
    assert settle(p)[-1] == 5.0 and "not known yet" in p.reason  # unknown: the configured interval
    # Paced to 90 % of the budget (a ceiling: late renewals and retries wobble around the aim).
    for size, interval in [(10, 5.0), (900, 5.0), (3_600, 20.0), (9_000, 50.0), (18_000, 100.0)]:
        fleet.size = size
        assert settle(p)[-1] == pytest.approx(interval), size
        assert p.writes_per_second is not None and p.writes_per_second <= 180.0 + 1e-9
        assert p.duration_seconds == round(3 * interval)  # the configured ratio: the reaping time scales with it
    assert p.reason == "scaled: fleet of 18000 VMs, budget 200 writes/s"
    fleet.size = 100_000  # beyond what 300 s of Lease allows: the budget gives way, and the pace says so
    assert settle(p)[-1] == 100.0 and p.duration_seconds == LONGEST_DURATION
    assert p.reason == "longest (300s of Lease): fleet of 100000 VMs, budget 200 writes/s exceeded, 1000 writes/s"


def test_the_slot_holders_writes_come_off_the_budget_first() -> None:
    """Two holders renew their Lease and their slot every 5 s (0.8 writes/s): the others share the rest."""
    fleet = Fleet(1_000)
    p = HeartbeatPace(interval=5.0, lease_duration=15.0, budget=50.0, slots=2, fleet=fleet)
    assert settle(p)[-1] == pytest.approx(998 / 44.2)
    assert p.writes_per_second == pytest.approx(45.0)
    fleet.size = 2  # only the holders: nothing to pace
    assert settle(p)[-1] == 5.0
    p.configure(interval=5.0, lease_duration=15.0, budget=0.5, slots=2)  # less than the holders alone write
    fleet.size = 10
    assert settle(p)[-1] == 100.0 and p.reason.startswith("longest")


def test_the_interval_moves_at_most_a_factor_of_two_per_renewal_both_ways() -> None:
    fleet = Fleet(9_000)
    p = pace(fleet)
    assert settle(p, 6) == pytest.approx([10.0, 20.0, 40.0, 50.0, 50.0, 50.0])
    assert p.reason == "scaled: fleet of 9000 VMs, budget 200 writes/s"
    fleet.size = 10
    steps = settle(p, 5)
    assert steps == pytest.approx([25.0, 12.5, 6.25, 5.0, 5.0])
    fleet.size = 9_000
    p.step()
    assert p.reason == "moving toward 50s: fleet of 9000 VMs, budget 200 writes/s"


def test_every_write_covers_the_interval_that_follows_it() -> None:
    """A reaper judges a Lease by the duration written on it: the duration written with each renewal must
    outlast the wait until the next one, while the interval grows, shrinks, and across a reload."""
    fleet = Fleet(1)
    p = pace(fleet)
    sizes = [1, 3_000, 60_000, 50, 7_000, 7_001, 0, 100_000, 2]
    for size in sizes:
        fleet.size = size
        for _ in range(4):
            interval = p.step()
            assert p.duration_seconds > interval, (size, interval, p.duration_seconds)
    p.configure(interval=10.0, lease_duration=20.0, budget=50.0)  # ratio 2 now
    for size in sizes:
        fleet.size = size
        interval = p.step()
        assert p.duration_seconds >= 2 * interval - 1e-9 and interval >= 10.0
        assert p.duration_seconds <= LONGEST_DURATION


def test_an_unknown_size_keeps_the_last_one_known() -> None:
    """An apiserver outage hides the slots: the fleet must not fall back to 5 s all at once and come back at
    thousands of writes per second."""
    fleet = Fleet(9_000)
    p = pace(fleet)
    settle(p)
    fleet.size = None
    assert settle(p)[-1] == pytest.approx(50.0) and p.fleet == 9_000


def test_a_slot_holder_keeps_the_configured_interval_and_budget_zero_switches_scaling_off() -> None:
    p = pace(Fleet(10_000), pinned=True)
    assert settle(p)[-1] == 5.0 and "holds a reaper slot" in p.reason
    p = pace(Fleet(10_000), budget=0.0)
    assert settle(p)[-1] == 5.0 and "not scaled" in p.reason


def test_write_budget_is_a_setting_with_a_clear_error() -> None:
    base = 'vm_name = "vm-a"\n[heartbeat]\n'
    assert parse_settings(base, require_cluster=False).heartbeat.write_budget == 250.0
    assert parse_settings(base + "write_budget = 50\n", require_cluster=False).heartbeat.write_budget == 50.0
    with pytest.raises(ConfigError, match=r"heartbeat\.write_budget.*>= 0"):
        parse_settings(base + "write_budget = -1\n", require_cluster=False)
    with pytest.raises(ConfigError, match=r"heartbeat\.write_budget"):
        parse_settings(base + 'write_budget = "fast"\n', require_cluster=False)


async def test_the_heartbeat_writes_the_scaled_duration_and_renews_at_the_scaled_interval() -> None:
    api, fleet = FakeApi(), Fleet()
    beat = Heartbeat(cast(KubeClient, api), "vm", "vm-a", interval=5, lease_duration=15, log=get_logger(),
                     wall_clock=lambda: 1_700_000_000.0, identity=ME, clock=FakeClock(),
                     pace=pace(fleet, budget=100.0))
    await beat.ensure()
    assert api.objects["vmesh-vm-a"]["spec"]["leaseDurationSeconds"] == 15
    fleet.size = 1_800  # 20 s at 90 % of 100 writes/s
    durations = []
    for _ in range(4):
        await beat.renew()
        durations.append(api.objects["vmesh-vm-a"]["spec"]["leaseDurationSeconds"])
    assert durations == [30, 60, 60, 60] and beat.interval == pytest.approx(20.0)


async def test_slot_holders_publish_the_fleet_size_and_the_others_read_the_largest() -> None:
    api, clock = FakeApi(), FakeClock()
    now = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    for index, (holder, size) in enumerate([("vm-b/x/y/1", "900"), ("vm-c/x/y/2", "1200"), ("", "5000")]):
        slot = build_slot(index, "vm", holder, 15, now)
        slot["metadata"]["annotations"] = {ANNOTATION_FLEET_SIZE: size}
        api.put(slot)
    api.put(build_lease("vm-d", "vm", 15, now, holder="vm-d/x/y/3"))  # a VM's Lease carries no count
    slots = ReaperSlots(cast(KubeClient, api), "vm", str(ME), slots=3, duration=15, renew_interval=5,
                        check_interval=30, log=get_logger(), clock=clock, fleet_size=lambda: 1234)
    assert slots.published_fleet is None
    assert await slots._look()  # the slot let go is taken, with this agent's count in the same write...
    assert slots.published_fleet == 1200  # ...and the largest count of the held ones was read, not the let-go one's
    assert published_fleet(api.objects["vmesh-reaper-2"]) == 1234
    for junk in ("-3", "1e6", "٣", "9" * 5000):  # a slot is anyone's to write: nothing in it may break a look
        assert published_fleet({"spec": {"holderIdentity": "h"}, "metadata": {"annotations": {
            ANNOTATION_FLEET_SIZE: junk}}}) is None


class CountingLeases(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.replaced = asyncio.Event()

    async def replace(self, resource: Resource, namespace: str, name: str, body: Body) -> Body:
        try:
            return await super().replace(resource, namespace, name, body)
        finally:
            self.replaced.set()


async def test_a_holder_publishes_with_its_renewals_and_nothing_before_it_has_counted() -> None:
    api, counted = CountingLeases(), Fleet()
    slots = ReaperSlots(cast(KubeClient, api), "vm", str(ME), slots=1, duration=15, renew_interval=0.01,
                        check_interval=30, log=get_logger(), fleet_size=counted)
    assert await slots._look()
    assert published_fleet(api.objects["vmesh-reaper-0"]) is None
    counted.size = 42
    keeper = asyncio.create_task(slots._keep())
    try:
        async with asyncio.timeout(2):
            await api.replaced.wait()  # one renewal
    finally:
        keeper.cancel()
    assert published_fleet(api.objects["vmesh-reaper-0"]) == 42


async def test_agents_without_a_slot_look_at_the_slots_no_more_often_than_they_renew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 VMs looking every 30 s would be 333 LISTs/s: the looks scale down with the paced interval."""
    api = FakeApi()
    now = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    api.put(build_slot(0, "vm", "vm-b/x/y/1", 15, now))  # held, renewed by its holder: no slot to take
    slots = ReaperSlots(cast(KubeClient, api), "vm", str(ME), slots=1, duration=15, renew_interval=5,
                        check_interval=30, log=get_logger(), look_every=lambda: 50.0)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise asyncio.CancelledError

    monkeypatch.setattr("agent.lease.slots.asyncio.sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await slots.run(lambda: asyncio.sleep(0))
    assert api.calls.count("list") == 2
    assert all(40.0 <= w <= 60.0 for w in waits[1:]), waits  # 50 s, jittered; not the 30 s slot_check
