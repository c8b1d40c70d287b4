"""/metrics: one agent's Prometheus registry (prometheus_client) and its exposition in the format the scraper
asks for, and the figures read from the agent when scraped.

Never the client's global default REGISTRY: many agents share one process in the fleet bench and tests, and
each one's /metrics shows only its own figures. The registry holds:
- the process and platform collectors (process_*, python_info: the process's, the same for every agent in it);
- the histograms observed as things happen (health checks, syncs, API requests): AgentMetrics;
- the figures read at scrape time from the agent: AgentCollector, a collector over the view, registered by the
  agent. Every vmesh_* series carries no vm label except vmesh_build_info: Prometheus adds instance and job.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from agent import __version__
from agent.api.agent_view import AgentView
from agent.api.documents import reaper_status

Family = GaugeMetricFamily | CounterMetricFamily
Families = dict[str, Family]  # by the name served (a counter's family name has no _total)

# Seconds. Checks time out at check.timeout (1 s by default); syncs are a few requests, slower when retried.
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
API_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.check_duration = Histogram(
            "vmesh_health_check_duration_seconds", "Duration of health checks, by service and port.",
            ["service", "port"], buckets=CHECK_BUCKETS, registry=self.registry)
        self.sync_duration = Histogram(
            "vmesh_sync_duration_seconds", "Duration of sync runs against the cluster, failed ones included.",
            buckets=SYNC_BUCKETS, registry=self.registry)
        self.api_latency = Histogram(
            "vmesh_api_request_duration_seconds", "Local API request latencies.",
            ["method", "route", "status"], buckets=API_BUCKETS, registry=self.registry)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def observe_check(self, service: str, port: int, seconds: float) -> None:
        self.check_duration.labels(service, str(port)).observe(seconds)

    def forget_check(self, service: str, port: int) -> None:
        """The service's port is not checked any more: its series goes, as its vmesh_checks_total does."""
        with contextlib.suppress(KeyError):
            self.check_duration.remove(service, str(port))

    def observe_sync(self, seconds: float) -> None:
        self.sync_duration.observe(seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and its Content-Type: OpenMetrics when `accept` asks for it,
        the text format 0.0.4 otherwise."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def _counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=labels)


class AgentCollector:
    """Register on the agent's own registry (AgentMetrics.register); collect() runs at each scrape."""

    def __init__(self, view: AgentView) -> None:
        self._view = view
        # vmesh_checks_total is a counter: what monitors counted before they went away (a listener gone, a
        # reload) stays in it, or the sum would go down and Prometheus read a counter reset (issue 20).
        # id(monitor) → (monitor, key, passed, failed); the monitor is held so that its id is not reused
        self._live: dict[int, tuple[object, tuple[str, str], int, int]] = {}
        self._retired: dict[tuple[str, str], list[int]] = {}

    def describe(self) -> list[Metric]:
        """The names, for the registry's duplicate check: without reading the agent (it may be starting)."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        families = _families()
        view = self._view
        self._registrations(families, view)
        self._checks(families, view)
        self._heartbeat(families, view)
        rec = view.reconciler
        families["vmesh_sync_runs_total"].add_metric([], rec.runs if rec else 0)
        families["vmesh_sync_errors_total"].add_metric([], rec.errors if rec else 0)
        reaper = reaper_status(view)
        families["vmesh_reaped_vms_total"].add_metric([], reaper["reaped"])
        families["vmesh_reaper_slot_held"].add_metric([], 1 if reaper["slot"] else 0)
        families["vmesh_reaper_brake_engaged"].add_metric([], 1 if reaper["brake"] else 0)
        families["vmesh_own_object_events_total"].add_metric([], view.watcher.events if view.watcher else 0)
        expires = self._token_expiry(view)
        if expires:
            families["vmesh_token_expiry_timestamp_seconds"].add_metric([], expires)
        self._services(families, view)
        s = view.settings
        families["vmesh_build_info"].add_metric([__version__, s.vm_name, s.namespace, s.backend], 1)
        yield from families.values()

    @staticmethod
    def _registrations(families: Families, view: AgentView) -> None:
        counts: dict[tuple[str, str], int] = {}
        for r in view.registrations:
            key = (r.service, "ready" if r.ready else "not_ready")
            counts[key] = counts.get(key, 0) + 1
        for (service, state), n in sorted(counts.items()):
            families["vmesh_registrations"].add_metric([service, state], n)

    def _checks(self, families: Families, view: AgentView) -> None:
        # Summed per (service, port): an IPv4 and an IPv6 registration of one port are one series.
        live: dict[int, tuple[object, tuple[str, str], int, int]] = {}
        for reg in view.tracked:  # unsorted: IPv4 and IPv6 addresses do not compare
            monitor = view.monitor(reg)
            if monitor is not None:
                live[id(monitor)] = (monitor, (reg.service, str(reg.port)), monitor.checks - monitor.failures,
                                     monitor.failures)
        for gone in self._live.keys() - live.keys():
            _, key, passed, failed = self._live[gone]
            retired = self._retired.setdefault(key, [0, 0])
            retired[0] += passed
            retired[1] += failed
        self._live = live
        totals = {key: list(counts) for key, counts in self._retired.items()}
        for _, key, passed, failed in live.values():
            passed_failed = totals.setdefault(key, [0, 0])
            passed_failed[0] += passed
            passed_failed[1] += failed
        for (service, port), (passed, failed) in sorted(totals.items()):
            families["vmesh_checks_total"].add_metric([service, port, "pass"], passed)
            families["vmesh_checks_total"].add_metric([service, port, "fail"], failed)

    @staticmethod
    def _heartbeat(families: Families, view: AgentView) -> None:
        beat = view.heartbeat
        families["vmesh_heartbeats_total"].add_metric(["success"], beat.renewals if beat else 0)
        families["vmesh_heartbeats_total"].add_metric(["failure"], beat.failures if beat else 0)
        if beat is not None and beat.last_renewal is not None:
            families["vmesh_heartbeat_age_seconds"].add_metric([], time.monotonic() - beat.last_renewal)
        families["vmesh_heartbeat_consecutive_failures"].add_metric([],
                                                                    beat.consecutive_failures if beat else 0)
        if beat is not None:
            families["vmesh_heartbeat_interval_seconds"].add_metric([], beat.interval)
            families["vmesh_heartbeat_lease_duration_seconds"].add_metric([], beat.duration_seconds)
            if beat.pace.fleet is not None:
                families["vmesh_fleet_vms"].add_metric([], beat.pace.fleet)

    @staticmethod
    def _token_expiry(view: AgentView) -> float:
        token = view.credentials.current_token()
        return token.claims.expires_at if token and token.claims else 0.0

    @staticmethod
    def _services(families: Families, view: AgentView) -> None:
        rec = view.reconciler
        reasons = view.maintenance_reasons
        for name in sorted({r.service for r in view.tracked} | reasons.keys()):
            registered = rec is not None and rec.registered(name)
            failing = rec is not None and rec.failing(name)
            families["vmesh_service_registered"].add_metric([name], 1 if registered else 0)
            families["vmesh_service_sync_failing"].add_metric([name], 1 if failing else 0)
            families["vmesh_service_maintenance"].add_metric([name], 1 if name in reasons else 0)


def _families() -> Families:
    """Every family this collector serves, empty, in the order served."""
    made: list[Family] = [
        _gauge("vmesh_registrations", "Registrations of this VM by service and state.", ("service", "state")),
        _counter("vmesh_checks_total", "Health check results by service and result.",
                 ("service", "port", "result")),
        _counter("vmesh_heartbeats_total", "Lease renewals by result.", ("result",)),
        _gauge("vmesh_heartbeat_age_seconds", "Seconds since the Lease was last renewed."),
        _gauge("vmesh_heartbeat_consecutive_failures",
               "Lease renewals that failed in a row (0 after a success)."),
        _gauge("vmesh_heartbeat_interval_seconds",
               "The Lease renewal interval in force: heartbeat.interval, or longer in a fleet whose Lease"
               " writes would exceed heartbeat.write_budget (status says why)."),
        _gauge("vmesh_heartbeat_lease_duration_seconds", "The leaseDurationSeconds written with it."),
        _gauge("vmesh_fleet_vms", "VMs' Leases in the fleet, as the reaper slots count them."),
        _counter("vmesh_sync_runs_total", "Sync runs against the cluster."),
        _counter("vmesh_sync_errors_total", "Sync runs that failed."),
        _counter("vmesh_reaped_vms_total", "Dead VMs this agent cleaned up after."),
        _gauge("vmesh_reaper_slot_held", "1 while this agent holds a reaper slot (and reaps)."),
        _gauge("vmesh_reaper_brake_engaged",
               "1 while this reaper reaps nothing because too many Leases expired at once."),
        _counter("vmesh_own_object_events_total",
                 "Changes to this VM's own objects made by others, seen by its watch."),
        _gauge("vmesh_token_expiry_timestamp_seconds",
               "When the agent's token expires (unix seconds of its exp claim)."),
        _gauge("vmesh_service_registered",
               "1 while the reconciler has this service registered in the cluster.", ("service",)),
        _gauge("vmesh_service_sync_failing", "1 while the last sync of this service failed.", ("service",)),
        _gauge("vmesh_service_maintenance", "1 while this service is in maintenance.", ("service",)),
        _gauge("vmesh_build_info", "Version and settings of this agent.",
               ("version", "vm", "namespace", "backend")),
    ]
    return {m.name + ("_total" if m.type == "counter" else ""): m for m in made}
