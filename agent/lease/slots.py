"""Reaper slots: a few Leases (`vmesh-reaper-0` .. `-<K-1>`), each held by at most one agent, so that only a
few agents watch the VMs' Leases and reap, and the apiserver's watch cost stays O(N), not O(N^2).

The rules are client-go's leader election (k8s.io/client-go/tools/leaderelection):
- a slot is taken when it does not exist, when its holder let it go (empty holderIdentity), or when it was
  *observed* unchanged for its leaseDurationSeconds on this agent's own monotonic clock: renewTime is
  never compared with local wall time (clocks on VMs drift);
- the holder renews it every `renew_interval`, optimistically from the cached object (no GET), and stops
  acting the moment it has not renewed for `renew_deadline` (shorter than the duration, so two agents
  never act for one slot at the same time);
- writes are resourceVersion-checked, so of two agents taking a slot at once exactly one wins;
- a holder that stops lets its slot go (holderIdentity "", as client-go's ReleaseOnCancel), so another
  agent takes it at its next look instead of after a duration.
The holder identity is the agent's per-boot one (agent.lease.identity), as in the VM's own Lease: two agents
with one vm_name (a cloned VM) never take each other's slot for their own. An agent holds at most one slot.
Agents without a slot look at the slots every `check_interval` with one LIST, and watch nothing.

A holder also publishes the fleet's size (the VMs' Leases it sees) on its slot, in the writes it makes anyway;
the others read it in that LIST, and pace their heartbeats by it (agent/lease/pace.py, issue 21).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from agent.cluster.backoff import Backoff, jittered
from agent.cluster.errors import ClusterError, Conflict, Forbidden, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import (
    ANNOTATION_FLEET_SIZE,
    LABEL_MANAGED_BY,
    MANAGER,
    lease_body,
    micro_time,
    with_annotations,
)
from agent.cluster.resources import LEASES
from agent.config import MAX_LEASE_DURATION
from agent.lease import election
from agent.logs import Problem

Body = dict[str, Any]
LABEL_SLOT = "vmesh.dev/reaper-slot"
# The longest leaseDurationSeconds of a peer's slot this agent waits out (the isolation policy refuses longer
# ones, and no agent is configured longer): a slot written with 2^31 s by a stolen token, or a bug, must not
# switch reaping off for good.
MAX_SLOT_DURATION = MAX_LEASE_DURATION
FIRST_LOOK_SPREAD = 10.0  # seconds at most: a fleet started at once looks at the slots over a while, after
# registering, not all in its first instant


def slot_name(index: int) -> str:
    return f"vmesh-reaper-{index}"


def build_slot(index: int, namespace: str, holder: str, duration_seconds: int,
               now: datetime.datetime) -> Body:
    slot = lease_body(slot_name(index), namespace, holder, duration_seconds, now,
                      labels={LABEL_MANAGED_BY: MANAGER, LABEL_SLOT: str(index)})
    slot["spec"]["leaseTransitions"] = 0
    return slot


class SlotObserver:
    """Pure bookkeeping: whether a slot may be taken now, by election's rules (agent/lease/election.py)."""

    def __init__(self, identity: str, clock: Callable[[], float] = time.monotonic,
                 earlier_run: Callable[[str], bool] = lambda holder: False) -> None:
        self.identity = identity
        # whether a holder is an earlier run of this agent on this boot, now gone
        self._earlier_run = earlier_run
        self._observer = election.Observer(clock)

    def takeable(self, lease: Body) -> bool:
        """Whether this agent may take the slot now (free, its own from before, or observed expired)."""
        seen, _ = self._observer.observe(lease)  # a first sight counts as a renewal
        if election.free_for(election.holder(lease), self.identity, self._earlier_run):
            return True
        return self._observer.expired(seen, lease, cap=MAX_SLOT_DURATION)


class ReaperSlots:
    def __init__(self, kube: KubeClient, namespace: str, identity: str, *, slots: int, duration: float,
                 renew_interval: float, check_interval: float, log: structlog.typing.FilteringBoundLogger,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 earlier_run: Callable[[str], bool] = lambda holder: False,
                 eligible: Callable[[], bool] = lambda: True,
                 until_eligible: Callable[[], Awaitable[None]] | None = None,
                 fleet_size: Callable[[], int | None] = lambda: None,
                 look_every: Callable[[], float] = lambda: 0.0) -> None:
        self._kube = kube
        # while holding: the VMs' Leases this agent's reaper sees (None: not listed)
        self._fleet_size = fleet_size
        self.published_fleet: int | None = None  # the largest size the holders published, at the last look
        # Looks come every check_interval, or this if longer: the heartbeat's paced interval, so that a large
        # fleet's slot LISTs scale down with its renewals (N / interval reads/s, not N / 30 s).
        self._look_every = look_every
        # Whether this agent may hold a slot now: not while it does not hold its own Lease (another agent with
        # its vm_name does), since then it reaps nothing and the slot would be lost to the fleet.
        self._eligible = eligible
        self._until_eligible = until_eligible
        self.namespace = namespace
        self.identity = identity
        self.slots = slots
        self.duration_seconds = max(1, math.ceil(duration))
        self.renew_interval = renew_interval
        self.renew_deadline = max(renew_interval, self.duration_seconds * 2 / 3)  # client-go: 10 s of 15 s
        self.check_interval = check_interval
        self._log = log
        self.observer = SlotObserver(identity, clock, earlier_run)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lease: Body | None = None  # the slot this agent holds, as last written
        self._problem = Problem()  # why slots cannot be looked at or taken, e.g. a missing RBAC grant

    @property
    def held(self) -> str | None:
        return str(self._lease["metadata"]["name"]) if self._lease else None

    @property
    def eligible(self) -> bool:
        """Whether this agent may hold a slot now (it holds its own Lease)."""
        return self._eligible()

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)

    async def run(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Look for a slot until one is taken; run `work` while it is held; start over when it is lost."""
        await asyncio.sleep(random.uniform(0, min(FIRST_LOOK_SPREAD, self.check_interval)))
        while True:
            if not self._eligible() and self._until_eligible is not None:
                await self._until_eligible()
                continue
            if not self._eligible() or not await self._look():
                await asyncio.sleep(jittered(max(self.check_interval, self._look_every())))
                continue
            task = asyncio.create_task(work(), name="reaper-work")
            keeper = asyncio.create_task(self._keep(), name="reaper-slot-renew")
            try:
                await asyncio.wait({task, keeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when cancelled (the agent stops): the slot stays held for Agent.stop to let go
                for t in (task, keeper):
                    t.cancel()
                await asyncio.gather(task, keeper, return_exceptions=True)
            if task.done() and not task.cancelled():
                exc = task.exception()
                self._log.error("reaping stopped unexpectedly; letting the slot go", slot=self.held,
                                error=f"{type(exc).__name__}: {exc}" if exc else "returned", exc_info=exc)
                await self.release()
            elif not self._eligible():
                self._log.warning("letting the reaper slot go: this agent does not hold its own lease",
                                  slot=self.held)
                await self.release()
            self._lease = None

    async def _look(self) -> bool:
        """One LIST of the slots; take the first free or expired one. True when this agent holds one."""
        try:
            items = await self._kube.list(LEASES, self.namespace, LABEL_SLOT)
        except ClusterError as exc:
            self._report(exc, "cannot look at the reaper slots")
            return False
        by_name = {str(i["metadata"]["name"]): i for i in items}
        self.published_fleet = max((n for n in map(published_fleet, items) if n is not None),
                                   default=self.published_fleet)
        start = random.randrange(self.slots)  # spread contention over the slots
        for index in (*range(start, self.slots), *range(start)):
            name = slot_name(index)
            current = by_name.get(name)
            if current is not None and not self.observer.takeable(current):
                continue
            try:
                write = self._take(current) if current is not None else self._create(index)
                self._lease = await self._settled(write)
            except (Conflict, NotFound):
                continue  # another agent was first
            except ClusterError as exc:
                self._report(exc, f"cannot take reaper slot {name}")
                return False
            self._problem.clear()
            self._log.info("reaper slot taken", slot=name)
            return True
        self._problem.clear()
        return False

    async def _create(self, index: int) -> Body:
        slot = build_slot(index, self.namespace, self.identity, self.duration_seconds, self._now())
        self._publish(slot)
        return await self._kube.create(LEASES, self.namespace, slot)

    def _publish(self, slot: Body) -> None:
        """Write the fleet's size on the slot, with a write made anyway
        (none while the reaper has not listed)."""
        size = self._fleet_size()
        if size is not None:
            with_annotations(slot, {ANNOTATION_FLEET_SIZE: str(size)})

    async def _take(self, current: Body) -> Body:
        lease = election.claimed(current, self.identity, self.duration_seconds, self._now())
        self._publish(lease)
        return await self._kube.replace(LEASES, self.namespace, str(lease["metadata"]["name"]), lease)

    async def _keep(self) -> None:
        """Renew until the slot is lost: taken by another agent, or not renewed for renew_deadline."""
        backoff = Backoff(base=0.5, cap=max(0.5, self.renew_interval / 2))
        last_renewal = self._clock()
        delay = self.renew_interval
        while True:
            await asyncio.sleep(delay)
            assert self._lease is not None
            if not self._eligible():
                return
            name = str(self._lease["metadata"]["name"])
            lease = election.claimed(self._lease, self.identity, self.duration_seconds, self._now())
            self._publish(lease)
            try:
                self._lease = await self._settled(self._kube.replace(LEASES, self.namespace, name, lease))
            except (Conflict, NotFound):
                self._log.warning("reaper slot lost: another agent holds it now", slot=name)
                return
            except ClusterError as exc:
                if self._clock() - last_renewal >= self.renew_deadline:
                    self._log.warning("reaper slot lost: not renewed in time", slot=name, error=str(exc))
                    return
                delay = backoff.next(after=exc)
                continue
            last_renewal = self._clock()
            backoff.reset()
            delay = self.renew_interval

    async def _settled(self, write: Awaitable[Body]) -> Body:
        """One write of the slot. When the agent stops meanwhile (the task is cancelled), the request may
        already have reached the apiserver: wait for its reply first, so that release() lets go of the version
        the apiserver holds, not of an older one (409) or of none (the slot would stay held by a stopped agent
        until it expires, CI saw it). Bounded by the client's request timeout."""
        future = asyncio.ensure_future(write)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._lease = await future
            raise

    async def release(self) -> None:
        """Let the held slot go, so that another agent takes it at its next look (shutdown)."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        lease = copy.deepcopy(lease)
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time(self._now()))
        try:
            await self._kube.replace(LEASES, self.namespace, str(lease["metadata"]["name"]), lease)
            self._log.info("reaper slot let go", slot=lease["metadata"]["name"])
        except ClusterError as exc:
            self._log.info("reaper slot not let go; another agent takes it once it expires", error=str(exc))

    def _report(self, exc: ClusterError, what: str) -> None:
        """One line per distinct problem: a missing grant is an error for the admin, an outage a warning."""
        message = f"reaping is off: {what}: {exc}" if isinstance(exc, Forbidden) else f"{what}: {exc}"
        self._problem.set(self._log.error if isinstance(exc, Forbidden) else self._log.warning, message)

    @property
    def problem(self) -> str:
        """Why slots cannot be looked at or taken ("" while they can)."""
        return self._problem.text


def published_fleet(slot: Body) -> int | None:
    """The fleet's size a held slot carries; None when let go, never published or not a count."""
    if not (slot.get("spec") or {}).get("holderIdentity"):
        return None
    text = str((slot.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_FLEET_SIZE, ""))
    # At most 9 digits: a slot is anyone's to write, and int() of thousands of digits raises (or takes long).
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None
