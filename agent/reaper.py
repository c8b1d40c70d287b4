"""Peer reaping: clean up after VMs that died without deregistering.

Every agent watches the Leases of its namespace and remembers, on its own monotonic clock, when it last
saw each one change. A Lease not seen renewed for longer than its leaseDurationSeconds + grace is deleted
with a resourceVersion precondition (so a renewal that races the delete wins), and the dead VM's objects
are removed directly; the garbage collector removes them too through their ownerReference to the Lease.
renewTime is never compared with this VM's wall clock: clocks on VMs drift.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.backoff import Backoff
from agent.cluster.errors import ClusterError, Conflict, Gone, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, MANAGER
from agent.cluster.resources import LEASES
from agent.sync.backend import Backend

Body = dict[str, Any]
CHECK_EVERY = 0.25  # seconds between in-memory expiry checks; no API calls unless something expired


@dataclass
class Observation:
    renew_time: str
    resource_version: str
    duration: float
    vm: str
    seen_at: float  # monotonic time this agent saw renew_time change


class LeaseObserver:
    """Pure bookkeeping of observed renewals; time is injected."""

    def __init__(self, own_lease: str, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.own_lease = own_lease
        self.grace = grace
        self.clock = clock
        self.leases: dict[str, Observation] = {}

    def observe(self, lease: Body) -> None:
        meta, spec = lease.get("metadata", {}), lease.get("spec", {})
        name = meta.get("name", "")
        renew = str(spec.get("renewTime") or spec.get("acquireTime") or "")
        previous = self.leases.get(name)
        seen_at = previous.seen_at if previous and previous.renew_time == renew else self.clock()
        self.leases[name] = Observation(
            renew_time=renew, resource_version=str(meta.get("resourceVersion", "")),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            vm=str((meta.get("labels") or {}).get(LABEL_VM, "")), seen_at=seen_at,
        )

    def forget(self, name: str) -> None:
        self.leases.pop(name, None)

    def replace_all(self, leases: list[Body]) -> None:
        names = {lease.get("metadata", {}).get("name") for lease in leases}
        self.leases = {k: v for k, v in self.leases.items() if k in names}
        for lease in leases:
            self.observe(lease)

    def expired(self) -> list[tuple[str, Observation]]:
        now = self.clock()
        return [
            (name, obs) for name, obs in self.leases.items()
            if name != self.own_lease and obs.vm and obs.duration > 0 and now - obs.seen_at > obs.duration + self.grace
        ]


class Reaper:
    def __init__(self, kube: KubeClient, namespace: str, own_lease: str, *, grace: float,
                 backend_for: Callable[[str], Backend], log: structlog.typing.FilteringBoundLogger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self.namespace = namespace
        self.observer = LeaseObserver(own_lease, grace, clock)
        self._backend_for = backend_for
        self._log = log
        self.reaped = 0
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Watch Leases (list, then watch from its version; list again when the watch expires) and reap."""
        checker = asyncio.create_task(self._check_loop(), name="reaper-check")
        backoff = Backoff(base=0.5, cap=10.0)
        try:
            while True:
                try:
                    await self._list_and_watch()
                    backoff.reset()
                except Gone:
                    continue
                except ClusterError as exc:
                    self._log.debug("lease watch interrupted", error=str(exc))
                    await asyncio.sleep(backoff.next())
        finally:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)

    async def _list_and_watch(self) -> None:
        items, version = await self._kube.list_with_version(LEASES, self.namespace,
                                                            f"{LABEL_MANAGED_BY}={MANAGER}")
        self.observer.replace_all(items)
        self.synced.set()
        selector = f"{LABEL_MANAGED_BY}={MANAGER}"
        async for kind, lease in self._kube.watch(LEASES, self.namespace, label_selector=selector,
                                                  resource_version=version):
            if kind in ("ADDED", "MODIFIED"):
                self.observer.observe(lease)
            elif kind == "DELETED":
                self.observer.forget(lease.get("metadata", {}).get("name", ""))

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            if self.synced.is_set():
                await self.reap_expired()

    async def reap_expired(self) -> int:
        count = 0
        for name, obs in self.observer.expired():
            if await self._reap(name, obs):
                count += 1
        return count

    async def _reap(self, name: str, obs: Observation) -> bool:
        log = self._log.bind(object=f"lease/{name}", dead_vm=obs.vm)
        try:
            await self._kube.delete(LEASES, self.namespace, name, resource_version=obs.resource_version)
        except Conflict:
            log.info("lease renewed just before reaping; leaving it")
            lease = await self._kube.get(LEASES, self.namespace, name)
            self.observer.observe(lease)
            return False
        except NotFound:
            self.observer.forget(name)
            return False
        except ClusterError as exc:
            log.warning("reaping failed; will retry", error=str(exc))
            return False
        self.observer.forget(name)
        try:
            await self._backend_for(obs.vm).remove_all()
        except ClusterError as exc:
            log.warning("dead VM's objects not all removed; the garbage collector will finish", error=str(exc))
        self.reaped += 1
        log.warning("reaped a dead VM", silent_for=round(self.observer.clock() - obs.seen_at, 1))
        return True
