"""The stop: SIGTERM to every worker at once; what their graceful stop left in the namespace, and how soon the
garbage collector removed it."""

from __future__ import annotations

import time

from .constants import STOP_CLEAN_S
from .figures import Run
from .fleet import Fleet
from .snapshot import try_snapshot


def left_after_stop(fleet: Fleet) -> tuple[str, bool]:
    """What a graceful stop of every worker left in the namespace (a deregistration that gave up, or objects
    the garbage collector has yet to remove after their Lease), and whether that is nothing."""
    assert fleet.bed.admin is not None
    snap = try_snapshot(fleet.bed.admin, fleet.namespace, fleet.backend)
    if snap is None:
        return "apiserver did not answer", False
    slices = len(snap.slices)  # none but with the endpointslice backend
    held = sum(1 for slot in snap.slots.values() if slot.holder)  # a released slot keeps its Lease, no holder
    shown = slices if fleet.backend == "endpointslice" else "-"
    return f"{len(snap.leases)} / {held} / {shown}", not (snap.leases or held or slices)


def watch_the_stop_clean_up(fleet: Fleet, run: Run) -> None:
    """What is left as the workers exit, then how long until nothing is (within STOP_CLEAN_S)."""
    exited = time.monotonic()
    run.left_after_stop, empty = left_after_stop(fleet)
    while not empty and time.monotonic() - exited < STOP_CLEAN_S:
        time.sleep(0.5)
        run.left_at_end, empty = left_after_stop(fleet)
    run.stop_clean_s = time.monotonic() - exited if empty else None
