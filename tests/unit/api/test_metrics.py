"""/metrics through prometheus_client: a real Agent (no cluster) with its real ApiServer on a real unix socket
and a TCP listener on loopback. Names, types and labels as the metrics contract says; OpenMetrics on request;
the TCP listener's two routes; one registry per agent."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import cast

import aiohttp
import prometheus_client
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.config import parse_settings
from agent.daemon.agent import Agent

# prometheus_client's OpenMetrics parser is not annotated; it yields Metric families, as the text one does.
parse_openmetrics = cast(Callable[[str], Iterable[Metric]], openmetrics_parser.text_string_to_metric_families)

# name -> (type, label names) of every vmesh_* family the agent serves (docs: the metrics contract).
CONTRACT = {
    "vmesh_registrations": ("gauge", {"service", "state"}),
    "vmesh_checks": ("counter", {"service", "port", "result"}),
    "vmesh_health_check_duration_seconds": ("histogram", {"service", "port"}),
    "vmesh_heartbeats": ("counter", {"result"}),
    "vmesh_heartbeat_age_seconds": ("gauge", set()),
    "vmesh_heartbeat_consecutive_failures": ("gauge", set()),
    "vmesh_heartbeat_interval_seconds": ("gauge", set()),
    "vmesh_heartbeat_lease_duration_seconds": ("gauge", set()),
    "vmesh_fleet_vms": ("gauge", set()),
    "vmesh_sync_runs": ("counter", set()),
    "vmesh_sync_errors": ("counter", set()),
    "vmesh_sync_duration_seconds": ("histogram", set()),
    "vmesh_reaped_vms": ("counter", set()),
    "vmesh_reaper_slot_held": ("gauge", set()),
    "vmesh_reaper_brake_engaged": ("gauge", set()),
    "vmesh_own_object_events": ("counter", set()),
    "vmesh_token_expiry_timestamp_seconds": ("gauge", set()),
    "vmesh_service_registered": ("gauge", {"service"}),
    "vmesh_service_sync_failing": ("gauge", {"service"}),
    "vmesh_service_maintenance": ("gauge", {"service"}),
    "vmesh_build_info": ("gauge", {"version", "vm", "namespace", "backend"}),
    "vmesh_api_request_duration_seconds": ("histogram", {"method", "route", "status"}),
}
Start = Callable[[str, str], Awaitable[Agent]]
OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def make_agent(workdir: Path, name: str, service: str) -> Agent:
    settings = parse_settings("\n".join([
        f'vm_name = "{name}"', f'state_dir = "{workdir / name}"',
        "[api]", f'socket = "{workdir / name / "agent.sock"}"',
        "[discovery]", "enabled = false",
        "[[service]]", f'name = "{service}"', "port = 9", 'protocol = "tcp"',
        "[service.check]", 'type = "exec"', 'command = ["true"]', 'interval = "1s"',
    ]) + "\n", require_cluster=False)
    return Agent(settings)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Start]:
    agents: list[Agent] = []

    async def start(name: str, service: str) -> Agent:
        agent = make_agent(tmp_path, name, service)
        agent.api.listen = ("127.0.0.1", 0)  # the config refuses port 0; a test wants any free port
        agents.append(agent)
        await agent.discover_once()  # the address, the declared registration, its monitor
        await agent.health.first_results()
        await agent.api.start()
        return agent

    yield start
    for agent in agents:
        await agent.health.close()
        await agent.api.stop()


async def get(agent: Agent, path: str, method: str = "GET", headers: dict[str, str] | None = None,
              tcp: bool = False) -> tuple[int, str, str]:
    if tcp:
        assert agent.api.tcp_address is not None
        host, port = agent.api.tcp_address
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector()
        url = f"http://{host}:{port}{path}"
    else:
        connector = aiohttp.UnixConnector(path=agent.settings.api.socket)
        url = f"http://agent{path}"
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.request(method, url, headers=headers or {}) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_every_family_has_its_name_type_and_labels(started: Start) -> None:
    agent = await started("vm-a", "db")
    await get(agent, "/v1/status")  # one API request, for the latency histogram
    status, content_type, text = await get(agent, "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in CONTRACT.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    assert "vmesh_check_duration_seconds" not in families  # removed: now the histogram
    for standard in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds",
                     "process_start_time_seconds", "python_info"):
        assert standard in families, standard
    assert families["process_resident_memory_bytes"].samples[0].value > 10e6

    def samples(name: str) -> list[Sample]:
        return families[name].samples

    assert [(s.labels, s.value) for s in samples("vmesh_registrations")] == [
        ({"service": "db", "state": "ready"}, 1.0)]
    count = next(s for s in samples("vmesh_health_check_duration_seconds") if s.name.endswith("_count"))
    assert count.labels == {"service": "db", "port": "9"} and count.value >= 1
    assert {(s.labels["result"], s.value >= 1) for s in samples("vmesh_checks")
            if s.name == "vmesh_checks_total"} == {("pass", True), ("fail", False)}
    assert [(s.labels, s.value) for s in samples("vmesh_service_maintenance")] == [({"service": "db"}, 0.0)]
    assert [s.value for s in samples("vmesh_service_registered")] == [0.0]  # no cluster: never registered
    assert samples("vmesh_heartbeat_age_seconds") == []  # absent until the first renewal
    assert samples("vmesh_token_expiry_timestamp_seconds") == []  # no token
    assert any(s.labels.get("route") == "/v1/status" for s in samples("vmesh_api_request_duration_seconds"))
    for name, family in families.items():
        if name.startswith("vmesh_") and name != "vmesh_build_info":
            assert all("vm" not in s.labels for s in family.samples), name


async def test_maintenance_shows_in_its_gauge(started: Start) -> None:
    agent = await started("vm-a", "db")
    agent.set_maintenance("db", True, "upgrading")
    _, _, text = await get(agent, "/metrics")
    assert 'vmesh_service_maintenance{service="db"} 1.0' in text
    assert 'vmesh_registrations{service="db",state="not_ready"} 1.0' in text


async def test_openmetrics_when_the_scraper_asks_for_it(started: Start) -> None:
    agent = await started("vm-a", "db")
    status, content_type, text = await get(agent, "/metrics", headers={"Accept": OPENMETRICS})
    assert status == 200
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["vmesh_checks"].type == "counter"
    assert families["vmesh_health_check_duration_seconds"].type == "histogram"
    assert "process_resident_memory_bytes" in families
    _, content_type, _ = await get(agent, "/metrics", headers={"Accept": "text/plain"})
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


async def test_the_tcp_listener_serves_only_metrics_and_health(started: Start) -> None:
    agent = await started("vm-a", "db")
    status, _, text = await get(agent, "/metrics", tcp=True)
    assert status == 200 and "vmesh_build_info{" in text and "process_resident_memory_bytes" in text
    status, content_type, body = await get(agent, "/v1/health", tcp=True)
    assert (status, content_type) == (200, "application/json; charset=utf-8") and '"status": "passing"' in body
    assert (await get(agent, "/v1/health?format=text", tcp=True))[:1] == (200,)
    for method, path, code in [("PUT", "/v1/services/db/maintenance", 404), ("GET", "/v1/status", 404),
                               ("GET", "/v1/services", 404), ("GET", "/v1/openapi.json", 404),
                               ("POST", "/metrics", 405), ("DELETE", "/v1/health", 405)]:
        status, content_type, body = await get(agent, path, method, tcp=True)
        assert (status, content_type.split(";")[0]) == (code, "application/json"), (method, path)
    assert agent.maintenance_reasons == {}
    assert (await get(agent, "/v1/status"))[0] == 200  # the unix socket still has everything


async def test_two_agents_in_one_process_have_their_own_registries(started: Start) -> None:
    first = await started("vm-a", "db")
    second = await started("vm-b", "web")
    assert first.metrics.registry is not second.metrics.registry
    _, _, one = await get(first, "/metrics")
    _, _, two = await get(second, "/metrics")
    assert 'vm="vm-a"' in one and 'vm="vm-b"' not in one
    assert 'service="web"' in two and 'service="db"' not in two
    assert b"vmesh_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)  # nothing global


async def test_a_listener_port_in_use_is_said_naming_the_key(started: Start, tmp_path: Path) -> None:
    first = await started("vm-a", "db")
    assert first.api.tcp_address is not None
    second = make_agent(tmp_path, "vm-b", "web")
    second.api.listen = first.api.tcp_address
    with pytest.raises(OSError, match=r"metrics.listen: cannot listen on 127.0.0.1:\d+: Address already in use"):
        await second.api.start()
    await second.api.stop()
    assert not await asyncio.to_thread(os.path.exists, second.settings.api.socket)


def test_checks_total_never_goes_down_when_a_monitor_goes_away() -> None:
    """Issue 20: vmesh_checks_total was the sum of the live monitors' counts, so it went down when a listener
    went away (or a reload replaced a monitor), which Prometheus reads as a counter reset."""
    from ipaddress import ip_address  # noqa: PLC0415

    from agent.api.metrics import AgentCollector, _families  # noqa: PLC0415
    from agent.state import Registration  # noqa: PLC0415

    class Monitor:
        def __init__(self, checks: int, failures: int) -> None:
            self.checks, self.failures = checks, failures

    v4 = Registration("db", 3306, "mysql", ip_address("10.0.0.5"))
    v6 = Registration("db", 3306, "mysql", ip_address("fd00::5"))
    monitors = {v4: Monitor(10, 2), v6: Monitor(5, 1)}

    class View:
        def __init__(self) -> None:
            self.tracked = [v4, v6]

        def monitor(self, reg: Registration) -> Monitor | None:
            return monitors.get(reg)

    view = View()
    collector = AgentCollector(view)  # type: ignore[arg-type]

    def totals() -> dict[str, float]:
        families = _families()
        collector._checks(families, view)  # type: ignore[arg-type]
        return {s.labels["result"]: s.value for s in families["vmesh_checks_total"].samples}

    assert totals() == {"pass": 12, "fail": 3}
    del monitors[v6]  # its listener went away
    view.tracked = [v4]
    assert totals() == {"pass": 12, "fail": 3}
    monitors[v4] = Monitor(1, 0)  # a reload replaced the other one
    assert totals() == {"pass": 13, "fail": 3}


def test_registrations_of_both_families_sort() -> None:
    """A dual-stack VM: the dataclass order compared IPv6Address with IPv4Address and raised TypeError."""
    from ipaddress import ip_address  # noqa: PLC0415

    from agent.state import Registration  # noqa: PLC0415

    v4, v6 = (Registration("db", 3306, "mysql", ip_address(a)) for a in ("10.0.0.5", "fd00::5"))
    assert sorted([v6, v4]) == [v4, v6] and v4 < v6 and not v6 < v4 and v4 <= v6
