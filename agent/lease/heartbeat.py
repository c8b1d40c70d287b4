"""The VM's Lease: created once, then renewed optimistically from the cached object.

Shaped after Kubernetes' lease controller: no GET before a renew, re-read only on 409, bounded
jittered backoff on failure. It uses its own cluster connection, so bulk syncing cannot delay it.

The Lease records who holds it (agent.lease.identity: VM, machine, boot, process). A Lease held by someone
else is taken only when it was let go, is an earlier run of this agent on this boot, or has been *observed*
not renewed for its duration on this agent's monotonic clock (client-go's leader-election rule; renewTime is
never compared with local time). Until then nothing is registered: a cloned VM with the same vm_name must
not replace the live VM's addresses.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.cluster.backoff import Backoff
from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_lease, lease_name, with_annotations
from agent.cluster.resources import LEASES
from agent.lease import election
from agent.lease.identity import HolderIdentity, process_alive, read_identity
from agent.lease.pace import HeartbeatPace

Body = dict[str, Any]
WallClock = Callable[[], float]


class LeaseHeld(ClusterError):
    """The VM's Lease is held by another agent (a clone of this VM, or a second agent with its vm_name)."""


class Heartbeat:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, *, interval: float, lease_duration: float,
                 log: structlog.typing.FilteringBoundLogger, wall_clock: WallClock = time.time,
                 on_new_lease: Callable[[], None] = lambda: None, identity: HolderIdentity | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 alive: Callable[[int], bool] = process_alive,
                 annotations: Callable[[], dict[str, str]] = dict, pace: HeartbeatPace | None = None) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self.identity = identity or read_identity(vm)
        self.name = lease_name(vm)
        # How often to renew, and the duration written with it: the configured ones, or scaled with the fleet.
        self.pace = pace or HeartbeatPace(interval=interval, lease_duration=lease_duration)
        self._log = log.bind(object=f"lease/{self.name}")
        self._wall_clock = wall_clock
        self._clock = clock
        self._alive = alive
        self._on_new_lease = on_new_lease
        self._annotations = annotations  # the fleet view's facts; written with a renewal when they change
        self._lease: Body | None = None
        self._observer = election.Observer(clock)  # another agent's hold on the Lease, as observed
        self._lock = asyncio.Lock()
        self._acquired = asyncio.Event()
        # the first acquisition was tried (by the sync), whatever came of it
        self._attempted = asyncio.Event()
        self._last_error = ""
        self.last_renewal: float | None = None  # monotonic time of the last successful write
        self.consecutive_failures = 0
        self.renewals = 0  # successful writes, for metrics
        self.failures = 0

    @property
    def interval(self) -> float:
        """The renewal interval in force."""
        return self.pace.interval

    @property
    def duration_seconds(self) -> int:
        """The leaseDurationSeconds written with the interval in force."""
        return self.pace.duration_seconds

    @property
    def uid(self) -> str:
        """The uid of the Lease this agent holds, the owner its objects name; empty when none is held."""
        return str(self._lease["metadata"]["uid"]) if self._lease is not None else ""

    @property
    def held(self) -> bool:
        """Whether this agent holds the Lease now (it created, adopted or took it, and has not lost it)."""
        return self._lease is not None

    async def until_held(self) -> None:
        """Return once this agent holds the Lease (at once if it does)."""
        await self._acquired.wait()

    @property
    def conflict(self) -> str:
        """Why nothing is registered because another agent holds the Lease; empty when none does."""
        c = self._observer.get(self.name)
        if c is None or self._lease is not None:
            return ""
        if c.renewals:
            # One line for STATUS= (at most 200 characters): who, the likely cause, what happens next.
            return (f"conflict: lease {self.name} is renewed by another live agent ({c.holder}): a clone "
                    f"of this VM or a second agent with vm_name {self.vm}; not registering until it stops")
        return (f"lease {self.name} is held by {c.holder}; not registering unless it goes unrenewed "
                "for its duration")

    @property
    def conflict_confirmed(self) -> bool:
        c = self._observer.get(self.name)
        return bool(c and c.renewals and self._lease is None)

    async def earlier_run_holder(self) -> str:
        """The holder of the VM's Lease when it is an earlier run of this agent on this boot whose process is
        gone (a restart: what it registered is still there), else "". A read only: nothing is taken here."""
        try:
            current = await self._kube.get(LEASES, self.namespace, self.name)
        except NotFound:
            return ""
        holder = election.holder(current)
        return holder if self.identity.earlier_run(holder, self._alive) else ""

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)

    async def ensure(self) -> Body:
        """The Lease as last written; created, adopted or taken over on first use. LeaseHeld while another
        agent holds it."""
        async with self._lock:
            if self._lease is None:
                await self._acquire_locked()
            assert self._lease is not None
            return self._lease

    async def renew(self) -> None:
        async with self._lock:
            if self._lease is None:
                await self._acquire_locked()  # LeaseHeld while another agent holds it
            else:
                self.pace.step()  # the duration written covers the interval until the next renewal
                lease = election.claimed(self._lease, str(self.identity), self.duration_seconds, self._now())
                with_annotations(lease, self._annotations())  # same PUT: a change costs no extra request
                try:
                    self._lease = await self._kube.replace(LEASES, self.namespace, self.name, lease)
                except Conflict:
                    # Someone else wrote it (or our cache is stale): re-read, and renew on the next beat,
                    # unless another agent took it (this one was silent for a duration):
                    # then stop registering.
                    current = await self._kube.get(LEASES, self.namespace, self.name)
                    if election.holder(current) == str(self.identity):
                        self._lease = current
                        raise
                    self._lease = None
                    self._acquired.clear()
                    self._log.error("lease taken over by another agent; not registering any more",
                                    holder=election.holder(current))
                    self._judge(current)
                    raise LeaseHeld(self.conflict) from None
                except NotFound:
                    await self._recreate_locked()
                else:
                    self.last_renewal = self._clock()
                    return
        self._on_new_lease()  # a new (or newly taken) Lease: the slices are rewritten under it

    async def lost(self, uid: str) -> None:
        """The Lease `uid` was deleted (seen by the watch of the VM's own objects): make a new one now, not at
        the next renewal, so the objects it owns are rewritten under it at once."""
        async with self._lock:
            if self._lease is None or self._lease["metadata"].get("uid") != uid:
                return  # released by us, or already replaced, or never ours
            await self._recreate_locked()
        self._on_new_lease()

    async def _recreate_locked(self) -> None:
        """Someone deleted the Lease: make a new one. Needs self._lock."""
        self._log.warning("lease deleted by someone else; recreating it")
        self._lease = None
        self._acquired.clear()
        await self._acquire_locked()

    async def _acquire_locked(self) -> None:
        """Create the Lease, or take the existing one if this agent may (see _judge). Needs self._lock."""
        try:
            await self._acquire_or_raise_locked()
        finally:
            self._attempted.set()

    async def _acquire_or_raise_locked(self) -> None:
        body = build_lease(self.vm, self.namespace, self.duration_seconds, self._now(),
                           holder=str(self.identity), annotations=self._annotations())
        try:
            self._lease = await self._kube.create(LEASES, self.namespace, body)
            self._log.info("lease created", duration_seconds=self.duration_seconds, holder=str(self.identity))
        except Conflict as exc:
            if not exc.already_exists:
                raise
            current = await self._kube.get(LEASES, self.namespace, self.name)
            holder = election.holder(current)
            if not self._judge(current):
                raise LeaseHeld(self.conflict) from None
            lease = election.claimed(current, str(self.identity), self.duration_seconds, self._now())
            with_annotations(lease, self._annotations())
            # resourceVersion-checked: a holder that renews meanwhile makes this a 409, and it stays theirs.
            self._lease = await self._kube.replace(LEASES, self.namespace, self.name, lease)
            if self._free_for(holder):
                self._log.info("lease adopted from a previous run", previous_holder=holder or None)
            else:
                self._log.warning("lease taken over: its holder stopped renewing it", previous_holder=holder)
        self._observer.forget(self.name)
        self.last_renewal = self._clock()
        self._acquired.set()

    def _judge(self, current: Body) -> bool:
        """Whether this agent may take the Lease as it is now; otherwise remember what was seen of its holder.

        Free (no holder), ours, or an earlier run of this agent on this boot: yes. Anyone else's: only once it
        has been seen unchanged for its leaseDurationSeconds on this agent's monotonic clock. A change seen
        meanwhile is a renewal: the holder lives, and this is a conflict."""
        holder = election.holder(current)
        if self._free_for(holder):
            return True
        seen, sight = self._observer.observe(current)
        if sight is election.Sight.FIRST:
            self._log.warning("lease held by another agent; watching whether it is renewed", holder=holder)
            return False
        if sight is election.Sight.RENEWED:
            if seen.renewals == 1:
                self._log.error("another live agent renews this VM's lease; not registering", holder=holder,
                                hint=f"a clone of this VM, or a second agent with vm_name {self.vm!r}")
            return False
        return self._observer.expired(seen, current, default=self.duration_seconds)

    def _free_for(self, holder: str) -> bool:
        return election.free_for(holder, str(self.identity),
                                 lambda h: self.identity.earlier_run(h, self._alive))

    async def run(self, backoff: Backoff | None = None) -> None:
        """Renew every interval until cancelled; retry failures with a bounded jittered backoff.

        The sync loop creates the Lease (it owns the VM's objects and reports their errors); this loop
        starts renewing once it exists; while another agent holds it, this loop looks at it every interval
        and takes it once it was seen unrenewed for its duration.
        """
        backoff = backoff or Backoff(base=0.2, cap=min(7.0, self.interval))
        await self._attempted.wait()
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            if self.last_renewal is None and self._observer.get(self.name) is None:
                await self._acquired.wait()  # never held yet: the sync creates it and reports why it cannot
                delay = self.interval
                continue
            try:
                await self.renew()
            except LeaseHeld:
                delay = self.interval  # watching another agent's Lease: not a failure of this one's heartbeat
                continue
            except ClusterError as exc:
                self.consecutive_failures += 1
                self.failures += 1
                delay = backoff.next(after=exc)
                if str(exc) != self._last_error:
                    self._log.warning("lease renewal failed", error=str(exc),
                                      failures=self.consecutive_failures, retry_in=round(delay, 2))
                self._last_error = str(exc)
                continue
            self.renewals += 1
            if self.consecutive_failures:
                self._log.info("lease renewal recovered", after_failures=self.consecutive_failures)
            self.consecutive_failures = 0
            self._last_error = ""
            backoff.reset()
            delay = self.interval

    async def release(self) -> bool:
        """Delete the Lease, exactly the one this agent holds and as it last wrote it (uid and resourceVersion
        preconditions): a Lease another agent took over meanwhile keeps the uid, and is not ours to delete.
        Whether this agent's Lease is gone now (False: none held, or another agent holds it)."""
        async with self._lock:
            lease = self._lease
            if lease is None:
                return False
            meta = lease["metadata"]
            try:
                try:
                    await self._kube.delete(LEASES, self.namespace, self.name, uid=meta["uid"],
                                            resource_version=meta.get("resourceVersion", ""))
                except Conflict:
                    current = await self._kube.get(LEASES, self.namespace, self.name)
                    if election.holder(current) != str(self.identity):
                        self._log.warning("lease not deleted: another agent holds it now",
                                          holder=election.holder(current))
                        self._lease = None
                        self._acquired.clear()
                        return False
                    await self._kube.delete(LEASES, self.namespace, self.name, uid=meta["uid"],
                                            resource_version=current["metadata"].get("resourceVersion", ""))
                self._log.info("lease deleted")
            except (NotFound, Conflict):
                pass
            self._lease = None  # only once it is gone: a failed delete may be tried again
            self._acquired.clear()
            return True

