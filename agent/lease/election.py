"""client-go's leader-election rules, written once: who may take a Lease, and what taking it writes.

Used by the VM's own Lease (heartbeat.py) and by the reaper slots (slots.py).
- A Lease may be taken at once when it is free (no holder), this agent's, or held by an earlier run of this
  agent on this boot whose process is gone; anyone else's only once it has been *observed* unchanged (same
  resourceVersion) for its leaseDurationSeconds on this agent's monotonic clock. A first sight counts as a
  renewal, and renewTime is never compared with the local wall clock (client-go's observedTime).
- Taking it from another holder counts a transition and sets acquireTime; every write carries the
  resourceVersion that was read, so a holder renewing meanwhile wins with a 409.
"""

from __future__ import annotations

import copy
import datetime
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.cluster.objects import micro_time

Body = dict[str, Any]


def holder(lease: Body) -> str:
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def free_for(current_holder: str, identity: str, earlier_run: Callable[[str], bool]) -> bool:
    """Whether `identity` may take a Lease held by `current_holder` without waiting: free, its own, or an
    earlier run of this agent on this boot."""
    return not current_holder or current_holder == identity or earlier_run(current_holder)


class Sight(enum.Enum):
    FIRST = "first"  # a new Lease or a new holder: its clock starts now
    RENEWED = "renewed"  # the same holder wrote it since the last look: alive, the clock starts over
    UNCHANGED = "unchanged"


@dataclass
class Observation:
    """A Lease's holder as observed: its last version, when that was first seen (monotonic), renewals seen."""

    holder: str
    version: str
    seen_at: float
    renewals: int = 0


class Observer:
    """When each Lease was last seen change, on an injected monotonic clock. Pure bookkeeping."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, Observation] = {}

    def observe(self, lease: Body) -> tuple[Observation, Sight]:
        name = str((lease.get("metadata") or {}).get("name", ""))
        version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        now, who = self.clock(), holder(lease)
        seen = self._seen.get(name)
        if seen is None or seen.holder != who:
            seen = self._seen[name] = Observation(who, version, now)
            return seen, Sight.FIRST
        if seen.version != version:
            seen.version, seen.seen_at = version, now
            seen.renewals += 1
            return seen, Sight.RENEWED
        return seen, Sight.UNCHANGED

    def expired(self, seen: Observation, lease: Body, *, default: float = 0.0, cap: float = math.inf) -> bool:
        """Whether `lease`, as just observed (`seen`, from observe()), went unrenewed for longer than its
        duration (`default` when it states none; at most `cap`, so that an endless duration written by a
        stolen token is waited out too). It does not observe the Lease again: the caller's look decides."""
        duration = min(float((lease.get("spec") or {}).get("leaseDurationSeconds") or default), cap)
        return self.clock() - seen.seen_at > duration

    def get(self, name: str) -> Observation | None:
        return self._seen.get(name)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)


def claimed(current: Body, identity: str, duration_seconds: int, now: datetime.datetime) -> Body:
    """`current` as `identity` writes it to take or renew it (a copy; the resourceVersion read stays)."""
    lease = copy.deepcopy(current)
    spec = lease.setdefault("spec", {})
    stamp = micro_time(now)
    if spec.get("holderIdentity") != identity:
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["acquireTime"] = stamp
    spec.update(holderIdentity=identity, leaseDurationSeconds=duration_seconds, renewTime=stamp)
    return lease
