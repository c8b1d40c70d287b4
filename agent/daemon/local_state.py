"""What this VM serves, and whether it is ready: discovery → health → maintenance → desired state.

The local half of one agent, with no cluster in it: a discovery pass finds the listeners and the address to
advertise, the health supervisor checks what was found, the maintenance store pauses what the admin paused,
and the desired state holds the result. The agent (agent/daemon/agent.py) wires it to the cluster side through
two callbacks: `on_changed` (the desired state changed: sync) and `on_addresses_lost` (an address went away:
reconnect the clients bound to it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping

import structlog

from agent.api.metrics import AgentMetrics
from agent.config import CheckSettings, Settings
from agent.daemon.maintenance import MaintenanceStore
from agent.discovery.addresses import IPAddress
from agent.discovery.policy import ListenerDecision
from agent.discovery.scanner import DiscoveryReport, Scanner
from agent.health.monitor import HealthMonitor
from agent.health.supervisor import HealthSupervisor
from agent.state import DesiredState, Registration, VanishTracker


class LocalState:
    def __init__(self, settings: Settings, log: structlog.typing.FilteringBoundLogger, *,
                 metrics: AgentMetrics, own_inode: Callable[[], int | None], on_changed: Callable[[], None],
                 on_addresses_lost: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.log = log
        self._own_inode = own_inode  # the metrics listener's socket: never a service of this VM
        self._on_changed = on_changed
        self._on_addresses_lost = on_addresses_lost
        self.state = DesiredState()
        self.changed = asyncio.Event()  # set at each change of the desired state (the drain follows health)
        self.report: DiscoveryReport | None = None
        self.maintenance = MaintenanceStore(settings.state_dir)
        if self.maintenance.unreadable:
            self.log.error(self.maintenance.unreadable)
        self.tracked: list[Registration] = []  # what discovery and the config say, before health
        self.present: list[Registration] = []  # of those, what is listening right now
        self.health = HealthSupervisor(self.check_settings, self.refresh, log,
                                       on_checked=lambda r, seconds: metrics.observe_check(
                                           r.service, r.port, seconds),
                                       on_forget=lambda r: metrics.forget_check(r.service, r.port))
        self.scanner = Scanner(settings.discovery.probe_timeout)
        # The discovery loop and a reload both run passes: one at a time, or the health monitors race.
        self._lock = asyncio.Lock()
        self.discovered = asyncio.Event()  # the first registrations are known (or the first pass found none)
        self.first_pass = asyncio.Event()  # a whole discovery pass is done
        self._vanish = VanishTracker(settings.discovery.remove_after)
        self._reported: dict[tuple[str, int], str] = {}

    async def discover_once(self) -> None:
        """One pass. The discovery loop and reload both call it; the lock makes them take turns."""
        async with self._lock:
            await self._discover_locked()
        self.discovered.set()
        self.first_pass.set()

    async def reconfigure(self, new: Settings) -> None:
        """A reload's local part: the new discovery settings and checks, then a pass under them."""
        self.settings = new
        self.scanner.probe_timeout = new.discovery.probe_timeout
        # A socket left unprobed because its protocol was not allowed is probed again: `discovery.allow` may
        # allow it now (it stayed "not probed" for the socket's life, issue 20).
        self.scanner.forget_unprobed()
        self._vanish.grace = new.discovery.remove_after
        async with self._lock:
            await self.health.restart_changed()
            await self._discover_locked()

    async def _publish_early(self, partial: DiscoveryReport) -> None:
        """A probe has just found a service to register: follow it now, not after the slowest probe of the
        pass. Nothing is dropped here; the end of the pass decides what is gone."""
        present = set(self.present)
        new = [r for r in self._registrations(partial) if r not in present]
        if not new:
            return
        self.present = [*self.present, *new]
        self.tracked = self._vanish.update(self.present, _local(partial))
        await self.health.follow(self.present)
        self.refresh()
        self.discovered.set()

    def _registrations(self, report: DiscoveryReport) -> list[Registration]:
        found = [Registration(d.service, d.listener.port, d.protocol, d.address)
                 for d in report.decisions if d.register and d.address is not None]
        return found + self._static_registrations(report.addresses.address)

    async def _discover_locked(self) -> None:
        s = self.settings
        own = self._own_inode()
        # With discovery off only the address is needed: no listener scan, no probes, no /proc walk.
        report = await self.scanner.discover(s.discovery.allow, address=s.address.address,
                                             interface=s.address.interface, cidr=s.address.cidr,
                                             scan=s.discovery.enabled, on_progress=self._publish_early,
                                             own=[own] if own else [])
        choice = report.addresses
        if self.report is None or self.report.addresses.address != choice.address:
            log = self.log.info if choice.address else self.log.error
            log("address chosen" if choice.address else "no address to advertise; nothing is registered",
                address=str(choice.address or ""), reason=choice.reason,
                candidates=[str(c.address) for c in choice.candidates])
        if self.report is not None:
            lost = ({c.address for c in self.report.addresses.candidates}
                    - {c.address for c in choice.candidates})
            if lost:
                self.log.info("addresses removed; reconnecting to the cluster",
                              removed=sorted(map(str, lost)))
                await self._on_addresses_lost()
        self.report = report
        for decision in report.decisions:
            self._log_decision(decision, report.process_of(decision.listener))
        listening = {(d.listener.address, d.listener.port) for d in report.decisions}
        self._reported = {k: v for k, v in self._reported.items() if k in listening}
        seen = self._registrations(report)
        self.present = seen
        self.tracked = self._vanish.update(seen, _local(report))
        await self.health.follow(seen)
        self.refresh()

    def refresh(self) -> None:
        """Desired state = what is tracked; ready only while present, healthy and not in maintenance."""
        paused = self.maintenance.reason
        desired = [
            dataclasses.replace(r, ready=r.ready and self.health.is_ready(r) and paused(r.service) is None)
            for r in self.tracked
        ]
        if self.state.replace(desired, preferred=self._advertised_order()):
            self.changed.set()
            self._on_changed()

    def _advertised_order(self) -> list[IPAddress]:
        """The advertised address, then the other candidates in `hostname -I` order."""
        if self.report is None:
            return []
        choice = self.report.addresses
        return [*([choice.address] if choice.address else []), *(c.address for c in choice.candidates)]

    def check_settings(self, registration: Registration) -> CheckSettings:
        declared = next((svc for svc in self.settings.service
                         if svc.name == registration.service and svc.port == registration.port), None)
        return declared.check if declared else self.settings.discovery.check

    def check_kind(self, registration: Registration) -> str:
        return self.check_settings(registration).kind_for(registration.protocol)

    def monitor(self, registration: Registration) -> HealthMonitor | None:
        return self.health.monitor(registration)

    def set_maintenance(self, service: str, enabled: bool, reason: str) -> str | None:
        self.maintenance.set(service, enabled, reason)
        self.log.warning("maintenance " + ("on" if enabled else "off"), service=service,
                         reason=reason or None)
        self.refresh()
        return self.maintenance.reason(service)

    @property
    def maintenance_reasons(self) -> Mapping[str, str]:
        if self.maintenance.unreadable:
            return {**{r.service: self.maintenance.unreadable for r in self.tracked},
                    **self.maintenance.reasons}
        return self.maintenance.reasons

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


def _local(report: DiscoveryReport) -> set[IPAddress]:
    choice = report.addresses
    return {c.address for c in choice.candidates} | ({choice.address} if choice.address else set())
