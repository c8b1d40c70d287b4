"""How often the VM renews its Lease: scaled with the fleet's size so that the fleet's Lease writes stay under
a budget (issue 21), the way Consul scales its anti-entropy interval (lib.RateScaledInterval).

    interval = max(heartbeat.interval,
                   (fleet - slots) / (AIM x heartbeat.write_budget - 2 x slots / heartbeat.interval))

at most LONGEST_DURATION / ratio, where ratio = lease_duration / interval as configured (3 by default): the
Lease's duration scales with the interval, so a dead VM is reaped after the scaled duration + grace. Never
faster than the configured interval; at most LONGEST_DURATION (300 s) of Lease, so that no dead VM's endpoints
stay ready for longer than five minutes: beyond about AIM x budget x LONGEST_DURATION / ratio VMs (22,500 at
the defaults) the budget is exceeded, and the pace says so. The budget is a ceiling, so the pace aims a little
under it (AIM): late renewals, retries and phase make the fleet's rate wobble around its aim. The `slots`
reaper slot holders renew their own Lease and their slot at the configured interval (below):
their writes come off the budget first.

Changes are gradual: each renewal moves the interval at most a factor of two toward its target, so a count
that is briefly wrong moves nobody far. Safe for reapers whichever way it moves: a reaper judges each Lease by
the leaseDurationSeconds written on it, and every write carries the duration of the interval that follows it.

A reaper slot holder renews at the configured interval whatever the fleet's size: its own renewals coming
back through its watch are what proves its view of the fleet current (agent/lease/reaper.py), and there are
only a few holders (reaper.slots). Pure: the fleet's size and whether this agent holds a slot are injected.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.config import MAX_LEASE_DURATION

LONGEST_DURATION = MAX_LEASE_DURATION  # seconds of Lease at most, however large the fleet
STEP = 2.0  # the interval moves at most this factor per renewal
AIM = 0.9  # of the budget: what the fleet's writes are paced to


class HeartbeatPace:
    def __init__(self, *, interval: float, lease_duration: float, budget: float = 0.0, slots: int = 0,
                 fleet: Callable[[], int | None] = lambda: None,
                 pinned: Callable[[], bool] = lambda: False) -> None:
        self._fleet = fleet  # the fleet's size as last learnt (VMs' Leases), None while unknown
        self._pinned = pinned  # whether to keep the configured interval (this agent holds a reaper slot)
        self.fleet: int | None = None  # the last size learnt; kept while the source knows none (an outage)
        self.interval = interval
        self.configure(interval=interval, lease_duration=lease_duration, budget=budget, slots=slots)

    def configure(self, *, interval: float, lease_duration: float, budget: float, slots: int = 0) -> None:
        """The configured interval, Lease duration and write budget (at start and on a reload). The interval
        in force moves toward the new target at the next renewals, gradually."""
        self.base = interval
        self.ratio = lease_duration / interval
        self.budget = budget
        self.slots = slots  # holders renew at the configured interval: their Lease and their slot
        self.longest = max(interval, LONGEST_DURATION / self.ratio)
        self.interval = min(max(self.interval, self.base), self.longest)

    @property
    def duration_seconds(self) -> int:
        """The leaseDurationSeconds to write with the interval in force."""
        return max(1, math.ceil(round(self.interval * self.ratio, 6)))  # 60.000000001 is 60

    def target(self) -> float:
        if self._pinned() or not self.budget or self.fleet is None:
            return self.base
        left = AIM * self.budget - 2 * self.slots / self.base  # writes/s for the VMs that hold no slot
        paced = max(0, self.fleet - self.slots)
        return min(self.longest, max(self.base, paced / left if left > 0 else math.inf))

    def step(self) -> float:
        """Before a renewal: learn the fleet's size and move the interval toward its target (at most a factor
        of STEP); returns the interval in force, which this renewal's duration covers."""
        fleet = self._fleet()
        if fleet is not None:
            self.fleet = fleet
        target = self.target()
        if target > self.interval:
            self.interval = min(target, self.interval * STEP)
        elif target < self.interval:
            self.interval = max(target, self.interval / STEP)
        return self.interval

    @property
    def writes_per_second(self) -> float | None:
        """The fleet's Lease writes per second if every VM but the slot holders renewed at this interval, and
        they at the configured one; None while the size is unknown."""
        if self.fleet is None:
            return None
        slots = min(self.slots, self.fleet)
        return (self.fleet - slots) / self.interval + 2 * slots / self.base

    @property
    def reason(self) -> str:
        """Why the interval is what it is, in one line for status, metrics' help
        and `kubectl vmesh get vms`."""
        if not self.budget:
            return "configured (heartbeat.write_budget is 0: not scaled)"
        if self._pinned():
            return "configured: this agent holds a reaper slot, whose view its own renewals keep current"
        if self.fleet is None:
            return "configured: the fleet's size is not known yet (the reaper slots publish it)"
        target = self.target()
        fleet = f"fleet of {self.fleet} VMs, budget {self.budget:g} writes/s"
        if abs(self.interval - target) > 1e-9:
            return f"moving toward {target:.3g}s: {fleet}"
        writes = self.writes_per_second or 0.0
        if target >= self.longest and writes > self.budget * (1 + 1e-9):
            return f"longest ({LONGEST_DURATION:g}s of Lease): {fleet} exceeded, {writes:.0f} writes/s"
        if target <= self.base:
            return f"configured: {fleet} fits at it"
        return f"scaled: {fleet}"
