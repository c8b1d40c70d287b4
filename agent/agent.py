"""One agent instance: wires discovery → desired state → sync, and owns the shutdown order.

Nothing here is global, so several agents (one per simulated VM) can share one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import structlog

from agent.cluster.kube import KubeClient
from agent.config import CheckSettings, Settings
from agent.discovery.addresses import IPAddress
from agent.discovery.policy import ListenerDecision
from agent.discovery.scanner import DiscoveryReport, Scanner
from agent.health.supervisor import HealthSupervisor
from agent.heartbeat import Heartbeat
from agent.logs import get_logger
from agent.reaper import Reaper
from agent.state import DesiredState, Registration, VanishTracker
from agent.sync.endpointslice import EndpointSliceBackend
from agent.sync.reconciler import Reconciler
from agent.tasks import TaskGroup

EXIT_OK = 0
EXIT_FAILED = 1


class Agent:
    def __init__(self, settings: Settings, log: structlog.typing.FilteringBoundLogger | None = None) -> None:
        self.settings = settings
        self.log = log or get_logger(vm=settings.vm_name)
        self.state = DesiredState()
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.failure = ""
        self.report: DiscoveryReport | None = None
        self._scanner = Scanner(settings.discovery.probe_timeout)
        self._vanish = VanishTracker(settings.discovery.remove_after)
        self._tracked: list[Registration] = []  # what discovery and the config say, before health
        self.health = HealthSupervisor(self._check_settings, self._refresh_state, self.log)
        self._tasks = TaskGroup(self.log, self._fail)
        self._clients: list[KubeClient] = []
        self._heartbeat: Heartbeat | None = None
        self._backend: EndpointSliceBackend | None = None
        self._reconciler: Reconciler | None = None
        self.reaper: Reaper | None = None
        self._reported: dict[tuple[str, int], str] = {}

    def _fail(self, why: str) -> None:
        self.failure = self.failure or why
        self.should_exit.set()

    def request_stop(self) -> None:
        """What a signal handler calls: the first asks for a graceful stop, a second forces it."""
        if self.should_exit.is_set():
            self.force_exit.set()
        self.should_exit.set()

    async def run(self) -> int:
        """Start, serve until asked to stop, stop. Returns the process exit code."""
        try:
            await self.start()
            await self.should_exit.wait()
        finally:
            await asyncio.shield(self.stop())
        return EXIT_FAILED if self.failure else EXIT_OK

    async def start(self) -> None:
        s = self.settings
        sync_client = await KubeClient.connect(s.cluster)
        self._clients.append(sync_client)
        beat_client = await KubeClient.connect(s.cluster)  # own connection: never queued behind bulk syncs
        self._clients.append(beat_client)
        self._heartbeat = Heartbeat(
            beat_client, s.namespace, s.vm_name, interval=s.heartbeat.interval,
            lease_duration=s.heartbeat.lease_duration, log=self.log,
            wall_clock=lambda: time.time() + s.heartbeat.wall_clock_offset,
            on_new_lease=lambda: self._reconciler.poke() if self._reconciler else None,
        )
        heartbeat = self._heartbeat

        def backend_for(vm: str) -> EndpointSliceBackend:
            return EndpointSliceBackend(sync_client, s.namespace, vm, heartbeat, self.log)

        self._backend = backend_for(s.vm_name)
        self.reaper = Reaper(sync_client, s.namespace, heartbeat.name, grace=s.reaper.grace,
                             backend_for=backend_for, log=self.log)
        self._reconciler = Reconciler(self._backend, self.state, resync_interval=s.sync.resync_interval,
                                      log=self.log)
        self.log.info("agent starting", namespace=s.namespace, backend=s.backend, server=sync_client.server)
        await self.discover_once()
        self._tasks.spawn("reconciler", self._reconciler.run())
        self._tasks.spawn("heartbeat", self._heartbeat.run())
        if s.discovery.enabled:
            self._tasks.spawn("discovery", self._discovery_loop())
        if s.reaper.enabled:
            self._tasks.spawn("reaper", self.reaper.run())

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.discovery.interval)
            await self.discover_once()

    async def discover_once(self) -> None:
        s = self.settings
        report = await self._scanner.discover(s.discovery.allow if s.discovery.enabled else {},
                                              address=s.address.address, interface=s.address.interface,
                                              cidr=s.address.cidr)
        choice = report.addresses
        if self.report is None or self.report.addresses.address != choice.address:
            log = self.log.info if choice.address else self.log.error
            log("address chosen" if choice.address else "no address to advertise; nothing is registered",
                address=str(choice.address or ""), reason=choice.reason,
                candidates=[str(c.address) for c in choice.candidates])
        if self.report is not None:
            lost = {c.address for c in self.report.addresses.candidates} - {c.address for c in choice.candidates}
            if lost:
                self.log.info("addresses removed; reconnecting to the cluster", removed=sorted(map(str, lost)))
                for client in self._clients:
                    await client.reconnect()
        self.report = report
        for decision in report.decisions:
            self._log_decision(decision, report.process_of(decision.listener))
        listening = {(d.listener.address, d.listener.port) for d in report.decisions}
        self._reported = {k: v for k, v in self._reported.items() if k in listening}
        seen = [
            Registration(d.service, d.listener.port, d.protocol, d.address)
            for d in report.decisions if d.register and d.address is not None
        ]
        seen += self._static_registrations(choice.address)
        local = {c.address for c in choice.candidates} | ({choice.address} if choice.address else set())
        self._tracked = self._vanish.update(seen, local)
        await self.health.follow(seen)
        self._refresh_state()

    def _refresh_state(self) -> None:
        """Desired state = what is tracked, ready only while present and healthy. Sync if it changed."""
        desired = [dataclasses.replace(r, ready=r.ready and self.health.is_ready(r)) for r in self._tracked]
        if self.state.replace(desired) and self._reconciler:
            self._reconciler.poke()

    def _check_settings(self, registration: Registration) -> CheckSettings:
        declared = next((svc for svc in self.settings.service
                         if svc.name == registration.service and svc.port == registration.port), None)
        return declared.check if declared else self.settings.discovery.check

    def _static_registrations(self, advertised: IPAddress | None) -> list[Registration]:
        if advertised is None:
            return []
        return [Registration(svc.name, svc.port, svc.protocol, advertised) for svc in self.settings.service]

    def _log_decision(self, d: ListenerDecision, process: str) -> None:
        key = (d.listener.address, d.listener.port)
        summary = f"{d.register}:{d.service}:{d.reason}"
        if self._reported.get(key) == summary:
            return
        self._reported[key] = summary
        log = self.log.bind(service=d.service or None, listener=f"{d.listener.address}:{d.listener.port}",
                            protocol=d.protocol, process=process or None)
        if d.register:
            log.info("service discovered", address=str(d.address), reason=d.reason)
        elif d.service:  # an allowed protocol that cannot be registered: the admin wants to know why
            log.warning("listener skipped", reason=d.reason)
        else:
            log.debug("listener skipped", reason=d.reason)

    async def stop(self) -> None:
        """The shutdown order, in one place, bounded by sync.stop_deadline:
        stop discovering and syncing → mark endpoints terminating → delete own objects → release the Lease.
        A second signal (force_exit) abandons the cluster clean-up; the Lease expiry and peers finish it.
        """
        await self._tasks.cancel("discovery", "reconciler", "reaper")
        await self.health.close()
        cleanup = asyncio.create_task(self._deregister(), name="deregister")
        forced = asyncio.create_task(self.force_exit.wait(), name="force-exit")
        try:
            done, _ = await asyncio.wait({cleanup, forced}, timeout=self.settings.sync.stop_deadline,
                                         return_when=asyncio.FIRST_COMPLETED)
            if cleanup not in done:
                why = "second signal" if forced in done else f"stop deadline of {self.settings.sync.stop_deadline}s"
                self.log.warning("clean-up abandoned; the Lease expiry and peers will remove the rest", why=why)
        finally:
            for task in (cleanup, forced):
                task.cancel()
            await asyncio.gather(cleanup, forced, return_exceptions=True)
            await self._tasks.cancel()
            await self.health.close()
            for client in self._clients:
                with contextlib.suppress(Exception):
                    await client.close()
            self._clients.clear()
        self.log.info("agent stopped", failure=self.failure or None)

    async def _deregister(self) -> None:
        if self._backend is None or self._heartbeat is None:
            return
        registrations = self.state.registrations
        try:
            if registrations:
                await self._backend.mark_terminating(registrations)
            await self._backend.remove_all()
            await self._tasks.cancel("heartbeat")
            await self._heartbeat.release()
        except Exception as exc:
            self.log.error("deregistration failed; the Lease expiry and peers will remove the rest", error=str(exc))
