"""The VM's Lease: created once, then renewed optimistically from the cached object.

Shaped after Kubernetes' lease controller: no GET before a renew, re-read only on 409, bounded
jittered backoff on failure. It uses its own cluster connection, so bulk syncing cannot delay it.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import math
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.backoff import Backoff
from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_lease, lease_name, micro_time
from agent.cluster.resources import LEASES

Body = dict[str, Any]
WallClock = Callable[[], float]


class Heartbeat:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, *, interval: float, lease_duration: float,
                 log: structlog.typing.FilteringBoundLogger, wall_clock: WallClock = time.time,
                 on_new_lease: Callable[[], None] = lambda: None) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self.name = lease_name(vm)
        self.interval = interval
        self.duration_seconds = max(1, math.ceil(lease_duration))
        self._log = log.bind(object=f"lease/{self.name}")
        self._wall_clock = wall_clock
        self._on_new_lease = on_new_lease
        self._lease: Body | None = None
        self._lock = asyncio.Lock()
        self._acquired = asyncio.Event()
        self._last_error = ""
        self.last_renewal: float | None = None  # monotonic time of the last successful write
        self.consecutive_failures = 0
        self.renewals = 0  # successful writes, for metrics
        self.failures = 0

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)

    async def ensure(self) -> Body:
        """The Lease as last written; created (or adopted after a restart) on first use."""
        async with self._lock:
            if self._lease is None:
                await self._acquire_locked()
            assert self._lease is not None
            return self._lease

    async def renew(self) -> None:
        async with self._lock:
            if self._lease is None:
                await self._acquire_locked()
                return
            lease = copy.deepcopy(self._lease)
            lease["spec"]["renewTime"] = micro_time(self._now())
            lease["spec"]["holderIdentity"] = self.vm
            lease["spec"]["leaseDurationSeconds"] = self.duration_seconds
            try:
                self._lease = await self._kube.replace(LEASES, self.namespace, self.name, lease)
            except Conflict:
                # Someone else wrote it (or our cache is stale): re-read, and renew on the next beat.
                self._lease = await self._kube.get(LEASES, self.namespace, self.name)
                raise
            except NotFound:
                await self._recreate_locked()
            else:
                self.last_renewal = time.monotonic()
                return
        self._on_new_lease()  # the old Lease's slices go with it (garbage collector): rewrite them

    async def lost(self, uid: str) -> None:
        """The Lease `uid` was deleted (seen by the watch of the VM's own objects): make a new one now, not at
        the next renewal, so the objects it owns are rewritten under it at once."""
        async with self._lock:
            if self._lease is None or self._lease["metadata"].get("uid") != uid:
                return  # released by us, or already replaced
            await self._recreate_locked()
        self._on_new_lease()

    async def _recreate_locked(self) -> None:
        """Someone deleted the Lease: make a new one. Needs self._lock."""
        self._log.warning("lease deleted by someone else; recreating it")
        self._lease = None
        await self._acquire_locked()

    async def _acquire_locked(self) -> None:
        """Create the Lease, or adopt the one a previous run of this agent left. Needs self._lock."""
        body = build_lease(self.vm, self.namespace, self.duration_seconds, self._now())
        try:
            self._lease = await self._kube.create(LEASES, self.namespace, body)
            self._log.info("lease created", duration_seconds=self.duration_seconds)
        except Conflict as exc:
            if not exc.already_exists:
                raise
            current = await self._kube.get(LEASES, self.namespace, self.name)
            current["spec"].update({k: v for k, v in body["spec"].items() if k != "acquireTime"})
            self._lease = await self._kube.replace(LEASES, self.namespace, self.name, current)
            self._log.info("lease adopted from a previous run")
        self.last_renewal = time.monotonic()
        self._acquired.set()

    async def run(self, backoff: Backoff | None = None) -> None:
        """Renew every interval until cancelled; retry failures with a bounded jittered backoff.

        The sync loop creates the Lease (it owns the VM's objects and reports their errors); this loop
        starts renewing once it exists.
        """
        backoff = backoff or Backoff(base=0.2, cap=min(7.0, self.interval))
        await self._acquired.wait()
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.renew()
            except ClusterError as exc:
                self.consecutive_failures += 1
                self.failures += 1
                delay = backoff.next()
                if str(exc) != self._last_error:
                    self._log.warning("lease renewal failed", error=str(exc), failures=self.consecutive_failures,
                                      retry_in=round(delay, 2))
                self._last_error = str(exc)
                continue
            self.renewals += 1
            if self.consecutive_failures:
                self._log.info("lease renewal recovered", after_failures=self.consecutive_failures)
            self.consecutive_failures = 0
            self._last_error = ""
            backoff.reset()
            delay = self.interval

    async def release(self) -> None:
        """Delete the Lease, exactly the one this agent holds (uid precondition)."""
        async with self._lock:
            lease = self._lease
            if lease is None:
                return
            try:
                await self._kube.delete(LEASES, self.namespace, self.name, uid=lease["metadata"]["uid"])
                self._log.info("lease deleted")
            except (NotFound, Conflict):
                pass
            self._lease = None  # only once it is gone: a failed delete may be tried again
