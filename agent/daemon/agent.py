"""One agent instance: wires discovery → desired state → sync → report, and owns the shutdown order.

Nothing here is global, so several agents (one per simulated VM) can share one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from agent import __version__, interpreter
from agent.api.documents import status_line
from agent.api.metrics import AgentCollector, AgentMetrics
from agent.api.server import ApiServer
from agent.cluster.backoff import retry_transient
from agent.cluster.errors import ClusterError
from agent.cluster.kube import KubeClient
from agent.cluster.objects import lease_annotations
from agent.cluster.resources import LEASES, SERVICES
from agent.config import Settings, parse_listen
from agent.daemon.account_watch import AccountWatch
from agent.daemon.local_state import LocalState
from agent.daemon.reload import reread
from agent.daemon.sdnotify import Notifier
from agent.daemon.tasks import RootTasks
from agent.discovery.scanner import DiscoveryReport
from agent.health.monitor import HealthMonitor
from agent.lease.heartbeat import Heartbeat
from agent.lease.identity import read_identity
from agent.lease.pace import HeartbeatPace
from agent.lease.reaper import Reaper
from agent.lease.slots import ReaperSlots
from agent.logs import get_logger
from agent.state import Registration
from agent.stop_kind import StopKind, forget_kind, read_kind, should_deregister
from agent.sync.backends.backend import Backend, no_lease, remove_shared_entries
from agent.sync.backends.registry import make_backend
from agent.sync.failures import ServiceFailures
from agent.sync.reconciler import Reconciler
from agent.sync.watcher import OwnObjectsWatcher, WatchTarget

Body = dict[str, Any]
EXIT_OK = 0
EXIT_FAILED = 1
CLOSE_RESERVE = 0.5  # seconds of the stop deadline kept for closing the API and the cluster connections
# The stop deadline kept for the removal itself (one Lease DELETE for the backends whose objects the Lease
# owns): when a whole site stops at once the marking is slow, and it must not cost the deregistration. At
# least REMOVAL_RESERVE seconds (REMOVAL_SHARE of a shorter deadline), and as long as the marking took, up to
# REMOVAL_SHARE_MAX of the deadline: an apiserver slow to mark is as slow to delete (bench/fleet, 1,000 VMs
# stopped at once: marking 5.8 s by median, the Lease DELETE after it up to 3.9 s; 4 % gave up with 2 s kept).
REMOVAL_RESERVE = 2.0
REMOVAL_SHARE = 0.2
REMOVAL_SHARE_MAX = 0.4
# Seconds before CLOSE_RESERVE at which removing what the garbage collector removes anyway gives up, so that
# the clean-up still ends in time and is not reported abandoned.
REMOVAL_MARGIN = 0.2


class Agent:
    def __init__(self, settings: Settings, *, config_path: str = "",
                 log: structlog.typing.FilteringBoundLogger | None = None, notifier: Notifier | None = None,
                 stop_kind_file: str = "") -> None:
        self.settings = settings
        self.config_path = config_path
        # Where the unit's ExecStop writes the kind of stop (agent.stop_kind); "" outside the shipped unit.
        self.stop_kind_file = stop_kind_file
        self.log = log or get_logger(vm=settings.vm_name)
        self.notifier = notifier or Notifier({})
        self.started_at = time.monotonic()
        # The interpreter and the deb's compiled modules do not change while the process runs: inspected once.
        self.interpreter = interpreter.inspect()
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.failure = ""
        # This agent's own registry (never prometheus_client's global one): a fleet shares the process.
        self.metrics = AgentMetrics()
        self.metrics.register(AgentCollector(self))
        self.local = LocalState(settings, self.log, metrics=self.metrics, own_inode=self._api_inode,
                                on_changed=lambda: self.reconciler.poke() if self.reconciler else None,
                                on_addresses_lost=self._reconnect)
        self.state, self.health = self.local.state, self.local.health
        self.tasks = RootTasks(self.log, self._fail)
        self.api = ApiServer(self, settings.api.socket, metrics=self.metrics, log=self.log,
                             listen=(parse_listen(settings.metrics.listen) if settings.metrics.listen
                                     else None))
        self.server = settings.cluster.server or settings.cluster.kubeconfig
        self.heartbeat: Heartbeat | None = None
        self.backend: Backend | None = None
        self.reconciler: Reconciler | None = None
        self.reaper: Reaper | None = None
        self.slots: ReaperSlots | None = None
        self.watcher: OwnObjectsWatcher | None = None
        self._clients: list[KubeClient] = []
        self.credentials = AccountWatch(settings, self.log)
        self._registering = False
        self._last_status = ""
        self._stopped = False
        self._stop_requested_at: float | None = None  # monotonic: the stop deadline counts from the signal
        self.stopping = ""  # once stopping: what the stop does, in words (STATUS=, `vmesh-agent status`)
        self.identity = read_identity(settings.vm_name)

    def _fail(self, why: str) -> None:
        self.failure = self.failure or why
        self._stop_requested_at = self._stop_requested_at or time.monotonic()
        self.should_exit.set()

    # -- what signal handlers call: they only set flags ------------------------------------------------

    def request_stop(self) -> None:
        """The first call asks for a graceful stop, a second forces it."""
        if self.should_exit.is_set():
            self.force_exit.set()
        self._stop_requested_at = self._stop_requested_at or time.monotonic()
        self.should_exit.set()

    def request_reload(self) -> None:
        self.reload_requested.set()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until asked to stop, stop. Returns the process exit code."""
        # an earlier run's: only this run's ExecStop speaks for this run's stop
        forget_kind(self.stop_kind_file)
        try:
            if await self._start_unless_stopped():
                await self.should_exit.wait()
        except (OSError, ClusterError) as exc:  # e.g. the socket is another agent's, a kubeconfig is unusable
            self.log.error("cannot start", error=str(exc))
            self.failure = f"cannot start: {exc}"
        finally:
            await asyncio.shield(self.stop())
        return EXIT_FAILED if self.failure else EXIT_OK

    async def _start_unless_stopped(self) -> bool:
        """start(), cut short by a stop request (with the cluster unreachable the first sync alone may take a
        request timeout). True when it finished; its errors are raised."""
        starting = asyncio.create_task(self.start(), name="start")
        stop = asyncio.create_task(self.should_exit.wait(), name="stop-requested")
        try:
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (starting, stop):
                task.cancel()
            await asyncio.gather(starting, stop, return_exceptions=True)
        if starting.cancelled():
            self.log.info("start cut short by a stop request")
            return False
        exc = starting.exception()
        if exc is not None:
            raise exc
        return True

    async def start(self) -> None:
        s = self.settings
        self.notifier.notify("STATUS=starting")
        await self.api.start()
        tokens, guard = self.credentials.tokens, self.credentials.guard
        sync_client = await KubeClient.connect(s.cluster, tokens, guard)
        self._clients.append(sync_client)
        beat_client = await KubeClient.connect(s.cluster, tokens, guard)  # never queued behind syncs
        self._clients.append(beat_client)
        self.server = sync_client.server
        self.tasks.spawn("discovery", self._discovery_loop())
        # SIGHUP is taken from the start, also while not registering (a refused token, another VM's): it was
        # ignored until registering began (issue 20).
        self.tasks.spawn("reload", self._reload_loop())
        await self.credentials.check(beat_client)
        self.tasks.spawn("credentials", self.credentials.watch(beat_client, self._registers_now))
        if self.credentials.account is not None and self.credentials.account.registers:
            await self._start_registering(sync_client, beat_client)
        # Gone further only with a token the cluster takes as this VM's: otherwise the agent stays up,
        # critical, saying why, and starts registering by itself once the token is fixed.
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    async def _registers_now(self) -> None:
        """The token is now one the agent registers with: start, unless it has already."""
        if not self._registering and len(self._clients) == 2:
            await self._start_registering(*self._clients)
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    def _lease_annotations(self) -> dict[str, str]:
        machine = socket.gethostname().split(".")[0] or self.identity.machine
        pace = self.heartbeat.pace if self.heartbeat is not None else None
        return lease_annotations(machine, __version__, self.settings.backend,
                                 (r.service for r in self.state.registrations),
                                 interval=pace.interval if pace else None, pace=pace.reason if pace else "")

    def _fleet_size(self) -> int | None:
        """The fleet's size as this agent knows it: its reaper's own count while it holds a slot, else what
        the slot holders published (agent/lease/slots.py); None while neither is known."""
        counted = self._counted_fleet()
        if counted is not None:
            return counted
        return self.slots.published_fleet if self.slots is not None else None

    def _counted_fleet(self) -> int | None:
        """The VMs' Leases this agent's reaper sees, while it holds a slot and has listed them."""
        if (self.slots is None or not self.slots.held
                or self.reaper is None or not self.reaper.synced.is_set()):
            return None
        return self.reaper.observer.fleet()

    async def _start_registering(self, sync_client: KubeClient, beat_client: KubeClient) -> None:
        """Heartbeat, sync, watches, reaper and the token's renewal: once the token is this VM's
        (or legacy)."""
        s = self.settings
        self._registering = True
        self.heartbeat = heartbeat = Heartbeat(
            beat_client, s.namespace, s.vm_name, interval=s.heartbeat.interval,
            lease_duration=s.heartbeat.lease_duration, log=self.log,
            on_new_lease=lambda: self.reconciler.poke() if self.reconciler else None, identity=self.identity,
            annotations=self._lease_annotations,
            pace=HeartbeatPace(interval=s.heartbeat.interval, lease_duration=s.heartbeat.lease_duration,
                               budget=s.heartbeat.write_budget, slots=s.reaper.slots,
                               fleet=self._fleet_size,
                               pinned=lambda: self.slots is not None and self.slots.held is not None),
        )

        self.backend = make_backend(s, sync_client, s.vm_name, heartbeat.ensure, self.log,
                                    preferred=lambda: self.state.preferred)

        async def after_reap(vm: str) -> None:
            await remove_shared_entries(make_backend(s, sync_client, vm, no_lease, self.log))

        self.reaper = Reaper(sync_client, s.namespace, heartbeat.name, grace=s.reaper.grace,
                             brake_fraction=s.reaper.brake_fraction, brake_limit=s.reaper.brake_limit,
                             heartbeat=heartbeat, after_reap=after_reap, log=self.log)
        # Slots are renewed on the heartbeat's connection: like the Lease, never queued behind bulk syncs.
        self.slots = ReaperSlots(beat_client, s.namespace, str(self.identity), slots=s.reaper.slots,
                                 duration=s.heartbeat.lease_duration, renew_interval=s.heartbeat.interval,
                                 check_interval=s.reaper.slot_check, log=self.log,
                                 earlier_run=self.identity.earlier_run, eligible=lambda: heartbeat.held,
                                 until_eligible=heartbeat.until_held, fleet_size=self._counted_fleet,
                                 look_every=lambda: heartbeat.interval)
        self.reconciler = Reconciler(self.backend, self.state, resync_interval=s.sync.resync_interval,
                                     log=self.log, on_done=self._report_status,
                                     on_duration=self.metrics.observe_sync)
        self.watcher = OwnObjectsWatcher(sync_client, s.namespace,
                                         self._watch_targets(self.backend, heartbeat),
                                         log=self.log, start_version=lambda: sync_client.list_version)
        self.log.info("agent starting", namespace=s.namespace, backend=s.backend, server=sync_client.server)
        if self.interpreter.problem:  # a Python newer than the deb: pure-Python fallbacks
            self.log.warning(self.interpreter.problem)
        self._start_renewal(beat_client)
        await self._first_registrations(resuming=await self._resuming(heartbeat))
        self.tasks.spawn("reconciler", self.reconciler.run())
        self.tasks.spawn("heartbeat", heartbeat.run())
        self.tasks.spawn("watch", self._watch_after_first_sync(self.reconciler, self.watcher))
        if s.reaper.enabled:
            self.tasks.spawn("reaper", self.slots.run(self.reaper.run))
        if self.notifier.watchdog_interval:
            self.tasks.spawn("watchdog", self._watchdog_loop(self.notifier.watchdog_interval))
        await self.reconciler.first_attempt_done.wait()
        # Everything imported and built so far lives as long as the process: keep it out of the garbage
        # collector's generations, whose full passes otherwise pause the loop for tens of milliseconds.
        gc.freeze()

    def _start_renewal(self, kube: KubeClient) -> None:
        renewal = self.credentials.make_renewal(kube)
        if renewal is not None:
            self.tasks.spawn("token-renewal", renewal.run())

    async def _watch_after_first_sync(self, reconciler: Reconciler, watcher: OwnObjectsWatcher) -> None:
        """Registering comes first: a fleet booting at once is not slowed by three watches per VM. Nothing is
        missed meanwhile: the watches start from the version of the first sync's list."""
        await reconciler.first_attempt_done.wait()
        await watcher.run()

    def _watch_targets(self, backend: Backend, heartbeat: Heartbeat) -> list[WatchTarget]:
        """Anti-entropy: this VM's own objects, the Services it serves, and its Lease."""
        resource, selector = backend.watched

        async def own_object(kind: str, obj: Body) -> None:
            if backend.affected(kind, obj) and self.reconciler is not None:
                self.log.debug("own object changed by someone else; syncing", change=kind,
                               object=f"{resource.plural}/{obj.get('metadata', {}).get('name')}")
                self.reconciler.poke()

        async def service(kind: str, obj: Body) -> None:
            if (obj.get("metadata", {}).get("name") in {r.service for r in self.state.registrations}
                    and self.reconciler):
                self.reconciler.poke()

        async def lease(kind: str, obj: Body) -> None:
            if kind == "DELETED":
                await heartbeat.lost(str(obj.get("metadata", {}).get("uid", "")))

        def compare() -> None:
            if self.reconciler is not None:
                self.reconciler.poke()

        return [WatchTarget(resource, own_object, label_selector=selector, on_fresh=compare),
                WatchTarget(SERVICES, service, on_fresh=compare),
                WatchTarget(LEASES, lease, field_selector=f"metadata.name={heartbeat.name}")]

    async def _resuming(self, heartbeat: Heartbeat) -> bool:
        """Whether an earlier run of this agent on this boot left its registrations in place (a restart): its
        Lease is there, held by a process of this machine and boot that is gone. A read only;
        an error means no."""
        try:
            previous = await heartbeat.earlier_run_holder()
        except ClusterError:
            return False
        if previous:
            self.log.info("resuming an earlier run's registrations: nothing is written before the first "
                          "discovery pass and the first check results", previous_holder=previous)
        return bool(previous)

    async def _first_registrations(self, *, resuming: bool = False) -> None:
        """Until the first sync may start: the first listeners are identified (a silent one does not hold up
        the others) and their first health checks have answered, so a healthy service is written once, ready.

        Resuming after a restart, the cluster already holds what the last run published: the first sync waits
        for the whole first discovery pass (a service found later would have its objects deleted, then made
        again) and for every first check result however long its timeout, so the published readiness stays
        until this run has its own."""
        stop = asyncio.create_task(self.should_exit.wait(), name="stop-requested")
        local = self.local
        steps = ((local.first_pass.wait, functools.partial(self.health.first_results, limit=None)) if resuming
                 else (local.discovered.wait, self.health.first_results))
        try:
            for step in steps:
                first = asyncio.create_task(step(), name="first-discovery")
                await asyncio.wait({first, stop}, return_when=asyncio.FIRST_COMPLETED)
                first.cancel()
                if stop.done():
                    return
        finally:
            stop.cancel()

    async def _discovery_loop(self) -> None:
        while True:
            await self.discover_once()
            await asyncio.sleep(self.settings.discovery.interval)

    async def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 only while every root task is alive: a wedged or dead loop gets the unit restarted."""
        while True:
            if self.tasks.alive():
                self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- discovery → desired state (agent/daemon/local_state.py) -------------------------------------------

    async def discover_once(self) -> None:
        await self.local.discover_once()

    def _api_inode(self) -> int | None:
        return self.api.tcp_inode

    async def _reconnect(self) -> None:
        for client in self._clients:
            await client.reconnect()

    # -- what the API reads (agent.api.agent_view.AgentView) -------------------------------------------------

    @property
    def report(self) -> DiscoveryReport | None:
        return self.local.report

    @property
    def tracked(self) -> Sequence[Registration]:
        return self.local.tracked

    @property
    def present(self) -> Sequence[Registration]:
        return self.local.present

    @property
    def registrations(self) -> frozenset[Registration]:
        return self.state.registrations

    @property
    def maintenance_reasons(self) -> Mapping[str, str]:
        return self.local.maintenance_reasons

    def loops_alive(self) -> bool:
        return self.tasks.alive()

    def monitor(self, registration: Registration) -> HealthMonitor | None:
        return self.local.monitor(registration)

    def check_kind(self, registration: Registration) -> str:
        return self.local.check_kind(registration)

    def set_maintenance(self, service: str, enabled: bool, reason: str) -> str | None:
        return self.local.set_maintenance(service, enabled, reason)

    # -- reporting -------------------------------------------------------------------------------------

    def status_line(self) -> str:
        """The state in words, for systemd's STATUS= (agent/api/documents.py,
        beside /v1/health's problems)."""
        return status_line(self)

    def _report_status(self) -> None:
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.notify(f"STATUS={line}")

    # -- reload ----------------------------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """SIGHUP: re-read the config. Invalid → keep the old one. Unchanged registrations stay untouched."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = reread(self.config_path, self.settings, self.log)
            if new is None:
                return False
            self.settings = new
            if self.heartbeat is not None:
                self.heartbeat.pace.configure(interval=new.heartbeat.interval,
                                              lease_duration=new.heartbeat.lease_duration,
                                              budget=new.heartbeat.write_budget,
                                              slots=self.heartbeat.pace.slots)  # reaper.*: restart only
            if self.reconciler is not None:
                self.reconciler.resync_interval = new.sync.resync_interval
            await self.local.reconfigure(new)
            self.log.info("config reloaded", path=self.config_path)
            return True
        finally:
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    # -- shutdown --------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """The shutdown order, in one place, bounded by sync.stop_deadline counted from the stop request:
        decide what kind of stop this is → stop the loops (the watchdog first) → for a stop for good: mark
        endpoints terminating → hold them for sync.drain → delete own objects → release the Lease; for a
        restart: leave every object and the Lease to the next process → let the reaper slot go → close the API
        and the connections. A second signal (force_exit) abandons the cluster clean-up at once; the Lease
        expiry and peers finish it.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = (self._stop_requested_at or time.monotonic()) + self.settings.sync.stop_deadline
        kind = read_kind(self.stop_kind_file)
        deregister = should_deregister(kind, self.settings.sync.deregister_on_stop,
                                       under_systemd=self.notifier.enabled, failing=bool(self.failure))
        self.stopping = "deregistering" if deregister else "restarting: registrations kept"
        self.notifier.notify("STOPPING=1", f"STATUS={self.stopping}")  # no WATCHDOG=1 after this (Notifier)
        self.log.info("stopping", kind=kind.value, deregister=deregister,
                      switch=self.settings.sync.deregister_on_stop, under_systemd=self.notifier.enabled,
                      failure=self.failure or None)
        # Health checks go on through the drain (serving follows them); they stop once the clean-up is over.
        await self.tasks.cancel("watchdog", "discovery", "reconciler", "watch", "reaper", "reload",
                                "credentials", "token-renewal")
        cleanup = asyncio.create_task(self._deregister(deadline) if deregister else self._keep(kind),
                                      name="deregister" if deregister else "keep")
        forced = asyncio.create_task(self.force_exit.wait(), name="force-exit")
        try:
            done, _ = await asyncio.wait({cleanup, forced}, return_when=asyncio.FIRST_COMPLETED,
                                         timeout=max(0.0, deadline - CLOSE_RESERVE - time.monotonic()))
            if cleanup not in done:
                why = ("second signal" if forced in done
                       else f"stop deadline of {self.settings.sync.stop_deadline}s")
                self.log.warning("clean-up abandoned; the Lease expiry and peers will remove the rest",
                                 why=why)
        finally:
            for task in (cleanup, forced):
                task.cancel()
            await asyncio.gather(cleanup, forced, return_exceptions=True)
            await self.health.close()
            await self.tasks.cancel()
            await self.api.stop()
            for client in self._clients:
                with contextlib.suppress(Exception):
                    await client.close()
            self._clients.clear()
        self.log.info("agent stopped", failure=self.failure or None)

    async def _keep(self, kind: StopKind) -> None:
        """A restart: nothing is marked or removed, and the Lease stays as last renewed; the next process
        adopts it at once (same machine and boot, this process gone). If none comes, the Lease expires and a
        reaper removes the VM as after a crash. The reaper slot is let go so another agent reaps meanwhile."""
        await self.tasks.cancel("heartbeat")
        if self.heartbeat is not None and self.heartbeat.held:
            self.log.info("registrations kept for the next process", kind=kind.value,
                          lease=self.heartbeat.name, failure=self.failure or None)
        try:
            if self.slots is not None:
                await self.slots.release()
        except Exception as exc:
            self.log.warning("reaper slot not let go; it is taken over once unrenewed", error=str(exc))

    async def _deregister(self, deadline: float) -> None:
        if self.backend is None or self.heartbeat is None:
            return
        backend, heartbeat = self.backend, self.heartbeat
        try:
            if heartbeat.held:
                await self._remove_own_objects(backend, deadline)
            else:
                # Nothing was written under this run's Lease (the cluster was never reached, or another agent
                # holds it): nothing to remove, and creating objects only to delete them helps nobody.
                self.log.info("nothing to deregister: this agent does not hold the VM's lease",
                              conflict=heartbeat.conflict or None)
            await self.tasks.cancel("heartbeat")
            lease_uid = heartbeat.uid
            released = await retry_transient(heartbeat.release)
            if self.slots is not None:
                await self.slots.release()
            if released and backend.owned_by_lease:
                await self._remove_what_the_lease_owned(backend, lease_uid, deadline)
        except Exception as exc:
            self.log.error("deregistration failed; the Lease expiry and peers will remove the rest",
                           error=str(exc))

    async def _remove_what_the_lease_owned(self, backend: Backend, lease_uid: str, deadline: float) -> None:
        """With the Lease gone, the garbage collector removes what it owned: usually within a second, but not
        while it resyncs (for tens of seconds after a CRD is installed, or while kube-controller-manager
        starts or changes leader). Removing the objects here too makes a stop for good prompt whatever the
        collector does; when the time runs out (a whole fleet stopping at once), the collector finishes: that
        is why the Lease went first, in one request."""
        try:
            async with asyncio.timeout(max(0.0, deadline - CLOSE_RESERVE - REMOVAL_MARGIN
                                           - time.monotonic())):
                removed = await backend.remove_all(lease_uid)
        except (TimeoutError, ClusterError) as exc:
            self.log.info("deregistered: the garbage collector removes the objects the lease owned",
                          why=str(exc) or "stop deadline")
            return
        self.log.info("deregistered", removed=removed)

    async def _remove_own_objects(self, backend: Backend, deadline: float) -> None:
        """Mark terminating and hold for the drain, with `serving` following the health checks, leaving the
        removal its reserve (REMOVAL_RESERVE, more after a slow marking). Entries in shared objects (legacy
        Endpoints) are taken out here.
        Objects the Lease owns go after the Lease (`_deregister`, next): its DELETE is one request per VM, and
        once it is done the garbage collector removes them even if this agent runs out of time, which is what
        lets a whole fleet stopping at once finish (issue 21)."""
        registrations = self.state.registrations
        if registrations:
            self.local.changed.clear()
            stop_deadline = self.settings.sync.stop_deadline
            began = time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, deadline - CLOSE_RESERVE
                                               - REMOVAL_SHARE_MAX * stop_deadline - began)):
                    await self._mark_terminating(backend, registrations)
            except TimeoutError:
                self.log.warning("endpoints not all marked terminating in time; removing them now",
                                 stop_deadline=stop_deadline)
            else:
                floor = min(REMOVAL_RESERVE, REMOVAL_SHARE * stop_deadline)
                reserve = min(REMOVAL_SHARE_MAX * stop_deadline, max(floor, time.monotonic() - began))
                until = min(time.monotonic() + self.settings.sync.drain, deadline - CLOSE_RESERVE - reserve)
                if until > time.monotonic():
                    self.notifier.notify("STATUS=draining: endpoints marked terminating")
                    self.log.info("endpoints marked terminating; draining before removal",
                                  seconds=round(until - time.monotonic(), 3))
                    # A re-marking (the health changed) still under way when the drain ends is given up.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, until - time.monotonic())):
                            await self._drain(backend, until)
        if not backend.owned_by_lease:
            removed = await retry_transient(backend.remove_all)
            self.log.info("deregistered", removed=removed)

    async def _mark_terminating(self, backend: Backend, registrations: frozenset[Registration]) -> None:
        try:
            await retry_transient(functools.partial(backend.mark_terminating, registrations))
        # the services that could not be marked are still removed after the drain
        except ServiceFailures as exc:
            self.log.warning("not every service could be marked terminating", error=str(exc))

    async def _drain(self, backend: Backend, until: float) -> None:
        """Hold the terminating endpoints until `until`; a health change meanwhile is written (serving)."""
        while (left := until - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    await self.local.changed.wait()
            except TimeoutError:
                return
            self.local.changed.clear()
            if self.state.registrations:
                await self._mark_terminating(backend, self.state.registrations)
