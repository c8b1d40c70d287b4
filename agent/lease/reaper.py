"""Peer reaping: clean up after VMs that died without deregistering, without ever endangering live ones.

Only the holder of a reaper slot (agent/lease/slots.py) runs this. It lists and then watches the VMs' Leases
and remembers, on its own monotonic clock, when it last saw each one change. A Lease not seen renewed for
longer than its leaseDurationSeconds + grace is deleted with a resourceVersion precondition (so a renewal that
races the delete wins), and the dead VM's objects go with it through the garbage collector (their
ownerReference names the Lease): the reaper deletes nothing but the Lease, since the isolation policy lets no
VM delete another VM's objects. What the GC cannot remove (a legacy VM's entries in the shared Endpoints) is
the `after_reap` callback's job, which the caller builds from the backends (agent/sync/backends/backend.py).
renewTime is never compared with this VM's wall clock.

Safety before speed (the node lifecycle controller's stance when a whole zone looks dead):
- the view counts only as far as it is known to be current: up to a little past the moment this agent last
  saw its *own* renewal come back through the watch (the stream is ordered, so everything written before it
  has been seen). A stalled or cut-off watch therefore ages nothing;
- any gap in the view (a relist, a watch error, a slot just taken, this agent's own heartbeat failing)
  restarts the observation clock of every Lease: nothing is reaped before a full duration + grace of
  silence observed after the gap;
- the brake: while more than `brake_fraction` of the VMs (and at least two) stopped renewing within one lease
  duration (a Lease silent for half its duration has missed a renewal; those reaped within the last duration
  count too), nothing is reaped; it is said once, in status and metrics, and lifts when renewals resume
  (a gap too: every VM is observed afresh). In a small fleet (SMALL_FLEET VMs or fewer) it holds at most
  `brake_limit` of this reaper's own uninterrupted renewals: there, two VMs dying together are too likely to
  leave their endpoints ready for ever (issue 20), and a reaper that kept renewing all along is not cut off;
- a failed delete backs off per Lease; a 403 is one clear line and "reaping is off: ..." in status.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.cluster.backoff import Backoff
from agent.cluster.errors import ClusterError, Conflict, Forbidden, Gone, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, MANAGER
from agent.cluster.resources import LEASES
from agent.lease.heartbeat import Heartbeat
from agent.logs import Problem

Body = dict[str, Any]
# seconds between in-memory expiry checks near a Lease's expiry; no API calls unless one expired
CHECK_EVERY = 0.25
IDLE_CHECK = 1.0  # seconds between them while no Lease is that close: an idle reaper wakes once a second
VM_LEASES = f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_VM}"  # the VMs' Leases (reaper slots carry no VM label)
WATCH_SECONDS = 300
REAP_CONCURRENCY = 8  # dead VMs cleaned up at once: a quarter of a fleet goes in seconds, not minutes
SMALL_FLEET = 10  # VMs in view, this one's included, up to which the brake gives way after `brake_limit`


@dataclass
class Observation:
    renew_time: str
    resource_version: str
    duration: float
    vm: str
    seen_at: float  # monotonic time this agent saw renew_time change (or the view restart after a gap)


class LeaseObserver:
    """Pure bookkeeping of observed renewals; time is injected."""

    def __init__(self, own_lease: str, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.own_lease = own_lease
        self.grace = grace
        self.clock = clock
        self.leases: dict[str, Observation] = {}
        self.own_seen_at: float | None = None  # when this agent's own renewal last came through the view

    def observe(self, lease: Body) -> None:
        meta, spec = lease.get("metadata", {}), lease.get("spec", {})
        name = meta.get("name", "")
        renew = str(spec.get("renewTime") or spec.get("acquireTime") or "")
        previous = self.leases.get(name)
        changed = previous is None or previous.renew_time != renew
        seen_at = self.clock() if changed or previous is None else previous.seen_at
        self.leases[name] = Observation(
            renew_time=renew, resource_version=str(meta.get("resourceVersion", "")),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            vm=str((meta.get("labels") or {}).get(LABEL_VM, "")), seen_at=seen_at,
        )
        if name == self.own_lease and changed:
            self.own_seen_at = seen_at

    def forget(self, name: str) -> None:
        self.leases.pop(name, None)

    def next_expiry(self) -> float | None:
        """The earliest time (on this clock) at which another VM's Lease observed so far would be expired;
        None while none can be.
        A frozen view (`current_until` with slack) only makes the real expiry later."""
        return min((obs.seen_at + obs.duration + self.grace for name, obs in self.leases.items()
                    if name != self.own_lease and obs.vm and obs.duration > 0), default=None)

    def restart(self) -> None:
        """A gap in the view: every Lease counts as renewed now."""
        now = self.clock()
        for obs in self.leases.values():
            obs.seen_at = now
        self.own_seen_at = now

    def replace_all(self, leases: list[Body]) -> None:
        """A fresh list: what happened before it is unknown, so it is a gap too."""
        self.leases = {}
        for lease in leases:
            self.observe(lease)
        self.restart()

    def current_until(self, slack: float | None) -> float:
        """How far the view is known to be current: now, or with `slack`, at most that long after this agent
        last saw its own renewal in it."""
        now = self.clock()
        if slack is None:
            return now
        return min(now, (self.own_seen_at if self.own_seen_at is not None else -float("inf")) + slack)

    def expired(self, slack: float | None = None) -> list[tuple[str, Observation]]:
        return self._silent(slack, lambda obs: obs.duration + self.grace)

    def stale(self, slack: float | None = None) -> list[tuple[str, Observation]]:
        """Leases silent for more than half their duration: a live VM renews every third of it or so, so these
        have missed a renewal at least. When many VMs are cut off at once, all of them are stale by the time
        the first one expires; that is what the brake looks at."""
        return self._silent(slack, lambda obs: obs.duration / 2)

    def _silent(self, slack: float | None,
                longer_than: Callable[[Observation], float]) -> list[tuple[str, Observation]]:
        """Other VMs' Leases not seen renewed for longer than `longer_than` of each,
        as far as the view goes."""
        now = self.current_until(slack)
        return [(name, obs) for name, obs in self.leases.items()
                if name != self.own_lease and obs.vm and obs.duration > 0
                and now - obs.seen_at > longer_than(obs)]

    def fleet(self) -> int:
        """The VMs' Leases in view, this VM's included."""
        return sum(1 for obs in self.leases.values() if obs.vm)


class ReapBrake:
    """Mass-expiry brake, pure: when many Leases expire at once, the reaper is probably the one cut off."""

    def __init__(self, fraction: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.fraction = fraction
        self.clock = clock
        self._reaped_at: collections.deque[float] = collections.deque()

    def reaped(self) -> None:
        self._reaped_at.append(self.clock())

    def holds(self, stale: int, fleet: int, window: float) -> bool:
        """Whether to reap nothing: more than `fraction` of the fleet (and at least two VMs) went silent
        within `window`: `stale` now, plus the ones already reaped in it.
        One VM alone dying is always reaped."""
        now = self.clock()
        while self._reaped_at and now - self._reaped_at[0] > window:
            self._reaped_at.popleft()
        count = stale + len(self._reaped_at)
        return count >= 2 and count > self.fraction * (fleet + len(self._reaped_at))


class Reaper:
    def __init__(self, kube: KubeClient, namespace: str, own_lease: str, *, grace: float,
                 after_reap: Callable[[str], Awaitable[None]], log: structlog.typing.FilteringBoundLogger,
                 brake_fraction: float = 0.5, brake_limit: float = 0.0, heartbeat: Heartbeat | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self.namespace = namespace
        self.observer = LeaseObserver(own_lease, grace, clock)
        self.brake = ReapBrake(brake_fraction, clock)
        self._heartbeat = heartbeat  # None for a one-shot pass by hand: no own renewals to judge the view by
        self._after_reap = after_reap  # what else goes with a reaped VM; raises ClusterError when it cannot
        self._log = log
        self._clock = clock
        self._retry_at: dict[str, tuple[Backoff, float]] = {}
        self.reaped = 0
        self.braking = ""  # why the brake holds, while it does
        self.brake_limit = brake_limit  # how long it holds at most in a small fleet; 0: no limit
        self._braking_since: float | None = None  # while it holds: since when, on a current view throughout
        self._problem = Problem()  # why reaping is off, e.g. a missing RBAC grant
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """While this agent holds a slot: follow the Leases and reap, until cancelled."""
        self.synced.clear()
        await asyncio.gather(self._follow(), self._check_loop())

    async def follow(self) -> None:
        """Follow the Leases without reaping (a one-shot pass reaps once, at its own time),
        until cancelled."""
        self.synced.clear()
        await self._follow()

    async def _follow(self) -> None:
        """List, then watch from the list's version (resuming after the server ends a watch); list again
        after any error. Never ends but by cancellation."""
        backoff = Backoff(base=0.5, cap=10.0)
        version = ""
        while True:
            try:
                if not version:
                    items, version = await self._kube.list_with_version(LEASES, self.namespace, VM_LEASES)
                    self.observer.replace_all(items)
                    self.synced.set()
                    self._problem.clear(self._log.info, "reaping works again")
                version = await self._watch(version)
                backoff.reset()
            except ClusterError as exc:
                version = ""  # a gap: judge nobody until listed again, and every observation starts over
                self.synced.clear()
                if isinstance(exc, Forbidden):
                    self._problem.set(self._log.error, f"reaping is off: {exc}")
                elif not isinstance(exc, Gone):
                    self._log.debug("lease watch interrupted; listing again", error=str(exc))
                if not isinstance(exc, Gone):
                    await asyncio.sleep(backoff.next(cap=2.0 if exc.transient else None, after=exc))

    async def _watch(self, version: str) -> str:
        """Follow one watch; returns the version to resume from when the server ends it."""
        async for kind, lease in self._kube.watch(LEASES, self.namespace, label_selector=VM_LEASES,
                                                  resource_version=version, timeout_seconds=WATCH_SECONDS):
            version = str(lease.get("metadata", {}).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED"):
                self.observer.observe(lease)
            elif kind == "DELETED":
                self.observer.forget(lease.get("metadata", {}).get("name", ""))
        return version

    def check_delay(self) -> float:
        """CHECK_EVERY while some Lease is within IDLE_CHECK of its expiry or past it (a reap to retry, the
        brake holding); IDLE_CHECK otherwise. A Lease first seen expires a lease duration plus the grace
        later, so a one-second look away misses none, and an idle agent is not woken four times a second."""
        soonest = self.observer.next_expiry()
        return CHECK_EVERY if soonest is not None and soonest - self._clock() <= IDLE_CHECK else IDLE_CHECK

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_delay())
            if not self.synced.is_set():
                continue
            try:
                await self.reap_expired()
            except Exception as exc:  # a bug must not silently end reaping: say so, and try again
                self._log.error("reaping failed unexpectedly; retrying", error=f"{type(exc).__name__}: {exc}",
                                exc_info=exc)
                await asyncio.sleep(1.0)

    async def reap_expired(self) -> int:
        beat = self._heartbeat
        if beat is not None and (beat.consecutive_failures or not beat.held):
            # Probably the one cut off, or not holding its own Lease (another agent with this vm_name does,
            # whose renewals would pass for this one's): judge nobody, and start over once back.
            self.observer.restart()
            self._braking_since = None
            return 0
        slack = 1.5 * beat.interval if beat is not None else None
        expired = self.observer.expired(slack)
        stale = self.observer.stale(slack) if expired else []
        window = max((obs.duration for _, obs in stale), default=0.0)
        fleet = self.observer.fleet()
        if not (expired and self.brake.holds(len(stale), fleet, window)):
            self._braking_since = None
        elif self._brake_gives_way(fleet):
            if self.braking:
                self._log.warning("reaping brake time limit reached in a small fleet; reaping the silent VMs",
                                  fleet=fleet, held_for=self.brake_limit, vms=sorted(o.vm for _, o in stale))
                self.braking = ""
        else:
            reason = (f"{len(stale)} of {fleet} VMs stopped renewing within one lease duration; reaping"
                      " nothing until they renew (the reaper is more likely cut off than they are dead)")
            if self._braking_since is not None:
                reason += f", or for {self.brake_limit:g} s at most in a fleet this small"
            if not self.braking:
                self._log.warning("reaping brake engaged", reason=reason, vms=sorted(o.vm for _, o in stale))
            self.braking = reason
            return 0
        if self.braking:
            # Releasing is a gap too: VMs resume one by one after a mass silence (a partition heals, a paused
            # host resumes), and the last ones must not be reaped for renewing a moment after the others.
            # Every VM gets a full lease duration + grace again before anyone is judged.
            self._log.info("reaping brake released", expired=len(expired), then="every VM observed afresh")
            self.braking = ""
            self.observer.restart()
            return 0
        now = self._clock()
        self._retry_at = {name: retry for name, retry in self._retry_at.items()
                          if name in self.observer.leases}
        due = [(name, obs) for name, obs in expired if now >= self._retry_at.get(name, (None, 0.0))[1]]
        limit = asyncio.Semaphore(REAP_CONCURRENCY)

        async def reap(name: str, obs: Observation) -> bool:
            async with limit:
                return await self._reap(name, obs)

        return sum(await asyncio.gather(*(reap(name, obs) for name, obs in due)))

    def _brake_gives_way(self, fleet: int) -> bool:
        """Whether the brake, holding now, has held for `brake_limit` in a small fleet (and keeps giving way
        until it releases). Only a reaper with a heartbeat counts that time: its view was current throughout
        (a failing heartbeat restarted it), so the silent VMs, not this reaper,
        are the ones cut off or dead."""
        if self._heartbeat is None or not self.brake_limit or fleet > SMALL_FLEET:
            self._braking_since = None
            return False
        now = self._clock()
        if self._braking_since is None:
            self._braking_since = now
        return now - self._braking_since >= self.brake_limit

    async def _reap(self, name: str, obs: Observation) -> bool:
        log = self._log.bind(object=f"lease/{name}", dead_vm=obs.vm)
        try:
            await self._kube.delete(LEASES, self.namespace, name, resource_version=obs.resource_version)
        except Conflict:
            log.info("lease renewed just before reaping; leaving it")
            with contextlib.suppress(ClusterError):  # the watch brings the renewal anyway
                self.observer.observe(await self._kube.get(LEASES, self.namespace, name))
            return False
        except NotFound:
            self.observer.forget(name)
            return False
        except ClusterError as exc:
            backoff, _ = self._retry_at.get(name) or (Backoff(base=1.0, cap=30.0), 0.0)
            delay = backoff.next(after=exc)
            self._retry_at[name] = (backoff, self._clock() + delay)
            if isinstance(exc, Forbidden):
                self._problem.set(self._log.error, f"reaping is off: {exc}")
            else:
                log.warning("reaping failed; will retry", error=str(exc), retry_in=round(delay, 1))
            return False
        self._retry_at.pop(name, None)
        self.observer.forget(name)
        self.brake.reaped()
        self._problem.clear(self._log.info, "reaping works again")
        try:
            await self._after_reap(obs.vm)
        except ClusterError as exc:
            log.warning("dead VM's addresses not all removed from the shared Endpoints (its Lease is gone, so"
                        " no reaper retries); remove them with `vmesh-agent deregister` as that VM",
                        error=str(exc))
        self.reaped += 1
        log.warning("reaped a dead VM", silent_for=round(self._clock() - obs.seen_at, 1))
        return True

    @property
    def problem(self) -> str:
        """Why reaping is off ("" while it works)."""
        return self._problem.text


async def reap_pass(kube: KubeClient, namespace: str, own_lease: str,
                    after_reap: Callable[[str], Awaitable[None]], *,
                    grace: float, brake_fraction: float, timeout: float,
                    log: structlog.typing.FilteringBoundLogger) -> str:
    """One pass of reaping, by `vmesh-agent reap` on a VM or `kubectl vmesh reap` from an admin's machine (a
    lone VM has no peer to reap it): follow the Leases for the longest lease period + grace, then judge once
    on a fresh list. Returns why the brake held, or "".

    Watched only, no reaping in the background while it waits (issue 20: the loop reaped during the wait);
    and, having no heartbeat of its own to tell whether its view is current, it reads every Lease afresh right
    before judging: a renewal its watch missed counts."""
    reaper = Reaper(kube, namespace, own_lease, grace=grace, brake_fraction=brake_fraction,
                    after_reap=after_reap, log=log)
    watcher = asyncio.create_task(reaper.follow())
    try:
        await asyncio.wait_for(reaper.synced.wait(), timeout)
        longest = max((o.duration for o in reaper.observer.leases.values()), default=0.0)
        await asyncio.sleep(longest + grace + 1)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        fresh, _ = await kube.list_with_version(LEASES, namespace, VM_LEASES)
        names = {str(lease.get("metadata", {}).get("name", "")) for lease in fresh}
        for name in [n for n in reaper.observer.leases if n not in names]:
            reaper.observer.forget(name)  # gone meanwhile: nothing to reap
        for lease in fresh:
            reaper.observer.observe(lease)  # renewed since: seen now, not expired
        await reaper.reap_expired()
        if reaper.braking:
            log.warning("nothing reaped: the brake holds", reason=reaper.braking)
        return reaper.braking
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
