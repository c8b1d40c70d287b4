"""The budget phase (issue 21): a fleet with heartbeat.write_budget, whose heartbeat interval grows as the
agents learn the fleet's size; the paced interval recomputed here, and whether the fleet keeps to the
budget."""

from __future__ import annotations

import math
import time

from .constants import (
    BUDGET_SETTLE_S,
    HEARTBEAT_S,
    LEASE_RATIO,
    LONGEST_LEASE_S,
    PACE_AIM,
    POLL_S,
    WRITES,
)
from .errors import _log
from .figures import Budget, Steady
from .fleet import Fleet
from .outage import wait_correct
from .rows import _num
from .snapshot import Snapshot, take_snapshot, try_snapshot


def paced_interval(vms: int, slots: int, budget: float) -> float:
    """agent/lease/pace.py's interval for a VM holding no slot, at the defaults (5 s, ratio 3)."""
    left = PACE_AIM * budget - 2 * slots / HEARTBEAT_S
    paced = max(0, vms - slots) / left if left > 0 else math.inf
    return min(LONGEST_LEASE_S / LEASE_RATIO, max(HEARTBEAT_S, paced))


def replaced_since(first: Snapshot, snap: Snapshot, expected: dict[str, str]) -> set[str]:
    return ({f"lease {vm}" for vm in expected if snap.leases.get(vm) != first.leases.get(vm)}
            | {f"slice {vm}" for vm in expected if snap.slices.get(vm) != first.slices.get(vm)})


def phase_budget(fleet: Fleet, budget: float, cap: float) -> tuple[Budget, Snapshot]:
    """Wait until every VM without a slot renews at the paced interval (its Lease carries the paced duration),
    watching that no live VM's Lease or slice is replaced meanwhile."""
    first = wait_correct(fleet, cap)
    b = Budget(budget, slots=len(first.slots) or 2)
    b.interval_s = paced_interval(fleet.vms, b.slots, budget)
    b.duration_s = math.ceil(round(LEASE_RATIO * b.interval_s, 6))
    _log(f"{fleet.label}: budget {budget:g} writes/s: waiting for the Leases to carry {b.duration_s} s "
         f"(every {b.interval_s:.2f} s)")
    expected, replaced = fleet.expected(), set()
    begin = time.monotonic()
    off: list[str] = []
    while time.monotonic() - begin < BUDGET_SETTLE_S:
        fleet.check()
        snap = try_snapshot(fleet.bed.admin, fleet.namespace, fleet.backend) if fleet.bed.admin else None
        if snap is not None:
            replaced |= replaced_since(first, snap, expected)
            holders = {slot.holder for slot in snap.slots.values()}
            off = [vm for vm in expected
                   if vm not in holders and abs(snap.lease_durations.get(vm, 0) - b.duration_s) > 1]
            if not off:
                b.settled_s = time.monotonic() - begin
                break
        time.sleep(POLL_S)
    b.live_replaced, b.replaced_examples = len(replaced), sorted(replaced)[:5]
    _log(f"{fleet.label}: paced Leases settled after {_num(b.settled_s, unit=' s')} ({len(off)} not), "
         f"{b.live_replaced} live VMs' objects replaced")
    return b, first


def finish_budget(fleet: Fleet, b: Budget, first: Snapshot, steady: Steady) -> None:
    """The window's figures: the fleet's Lease writes, and live VMs replaced until its end."""
    assert fleet.bed.admin is not None
    # The apiserver's own count of Lease writes (the bench's watch falls behind an overloaded apiserver and
    # would undercount): every write to a Lease, VMs' and slots', over the window.
    b.writes_per_s = steady.vms * sum(v for key, v in steady.by_request.items()
                                      if key.split(" ")[0] in WRITES and key.endswith(" leases"))
    replaced = replaced_since(first, take_snapshot(fleet.bed.admin, fleet.namespace, fleet.backend),
                              fleet.expected())
    b.live_replaced = max(b.live_replaced, len(replaced))
    b.replaced_examples = b.replaced_examples or sorted(replaced)[:5]
    _log(f"{fleet.label}: fleet Lease writes {b.writes_per_s:.1f}/s (budget {b.budget:g})")
