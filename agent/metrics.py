"""One agent's Prometheus registry (prometheus_client), and its exposition in the format the scraper asks for.

Never the client's global default REGISTRY: many agents share one process in the fleet bench and tests, and
each one's /metrics shows only its own figures. The registry holds:
- the process and platform collectors (process_*, python_info: the process's, the same for every agent in it);
- the histograms observed as things happen (health checks, syncs, API requests), owned here;
- the figures read at scrape time from the agent (agent.api.metrics.AgentCollector, registered by the agent).
"""

from __future__ import annotations

import contextlib

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import Histogram
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

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
        """The body and its Content-Type: OpenMetrics when `accept` asks for it, the text format 0.0.4 otherwise."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
