"""Many agent instances on one event loop (the fleet shape), reaper on: legacy Endpoints stays exact under
concurrency, two agents hold the reaper slots, leavers let theirs go, and each agent's /metrics shows its own
figures only (one prometheus_client registry per agent)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from agent.config import parse_settings
from agent.daemon.agent import Agent
from tests.testbed.cluster import Cluster
from tests.testbed.waiting import wait_until

FLEET = 50


def agent_config(cluster: Cluster, namespace: str, token_file: Path, workdir: Path, index: int) -> str:
    return f"""
vm_name = "fleet-{index}"
namespace = "{namespace}"
backend = "endpoints"
state_dir = "{workdir}/state-{index}"

[cluster]
server = "{cluster.env['APISERVER_URL']}"
ca_file = "{cluster.ca_file}"
token_file = "{token_file}"

[address]
address = "198.18.200.{index + 1}"

[discovery]
enabled = false

[[service]]
name = "mysqldb"
port = 3306
protocol = "mysql"
check = {{ type = "exec", command = ["true"], interval = "5s" }}

[heartbeat]
interval = "2s"
lease_duration = "10s"

[reaper]
slot_check = "1s"

[api]
socket = "{workdir}/agent-{index}.sock"
"""


async def scrape(agent: Agent) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The agent's /metrics over its unix socket: sample name -> (labels, value) of each sample."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=agent.settings.api.socket)) as session, \
            session.get("http://agent/metrics") as response:
        assert response.status == 200
        text = await response.text()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def slot_holders(cluster: Cluster, namespace: str) -> dict[str, str]:
    return {o["metadata"]["name"]: (o["spec"].get("holderIdentity") or "").split("/")[0]
            for o in cluster.list("lease", namespace, "vmesh.dev/reaper-slot")}


def addresses(cluster: Cluster, namespace: str) -> tuple[list[str], list[str]]:
    ep: dict[str, Any] | None = cluster.get("endpoints", "mysqldb", namespace)
    subsets = (ep or {}).get("subsets") or []
    ready = [a["ip"] for s in subsets for a in s.get("addresses") or []]
    not_ready = [a["ip"] for s in subsets for a in s.get("notReadyAddresses") or []]
    return ready, not_ready


async def test_fifty_agents_on_one_loop_register_then_half_leave(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token(namespace, shared=True))  # backend endpoints: the legacy account
    log = structlog.get_logger()
    agents = [
        Agent(parse_settings(agent_config(cluster, namespace, token_file, tmp_path, i)), log=log.bind(vm=f"fleet-{i}"))
        for i in range(FLEET)
    ]
    everyone = sorted(f"198.18.200.{i + 1}" for i in range(FLEET))
    try:
        await asyncio.gather(*(a.start() for a in agents))
        await asyncio.to_thread(wait_until, lambda: sorted(addresses(cluster, namespace)[0]) == everyone, 60,
                                "all 50 addresses ready")
        ready, not_ready = addresses(cluster, namespace)
        assert len(ready) == len(set(ready)) == FLEET
        assert not_ready == []
        holders = await asyncio.to_thread(wait_until, lambda: all((h := slot_holders(cluster, namespace)).values())
                                          and len(h) == 2 and h, 15, "both reaper slots held")
        assert sum(1 for a in agents if a.slots and a.slots.held) == 2
        assert set(holders.values()) <= {a.settings.vm_name for a in agents}

        # Fifty registries in one process: each agent's figures are its own.
        holder = next(a for a in agents if a.slots and a.slots.held)
        other = next(a for a in agents if not (a.slots and a.slots.held))
        # A renewal each first (50 agents can all be ready before the first interval has passed: CI once scraped
        # a count of 0, which says nothing about whose it is).
        await asyncio.to_thread(wait_until, lambda: all(a.heartbeat and a.heartbeat.renewals for a in (holder, other)),
                                15, "a Lease renewal by each agent scraped")
        for agent, held in ((holder, 1.0), (other, 0.0)):
            metrics = await scrape(agent)
            assert [labels["vm"] for labels, _ in metrics["vmesh_build_info"]] == [agent.settings.vm_name]
            assert metrics["vmesh_reaper_slot_held"] == [({}, held)]
            assert metrics["vmesh_registrations"] == [({"service": "mysqldb", "state": "ready"}, 1.0)]
            beats = {labels["result"]: value for labels, value in metrics["vmesh_heartbeats_total"]}
            assert agent.heartbeat is not None and agent.reconciler is not None
            # Scraped a moment ago: this agent's own counts, which may have moved on since, never another's.
            assert 0 < beats["success"] <= agent.heartbeat.renewals
            assert 0 < metrics["vmesh_sync_duration_seconds_count"][0][1] <= agent.reconciler.runs
            assert "process_resident_memory_bytes" in metrics

        leaving, staying = agents[::2], agents[1::2]
        await asyncio.gather(*(a.stop() for a in leaving))
        expected = sorted(str(a.settings.address.address) for a in staying)
        ready, not_ready = addresses(cluster, namespace)
        assert sorted(ready) == expected, "exactly the staying agents' addresses, no duplicates"
        assert len(ready) == len(set(ready))
        assert not_ready == []
        # Leavers let their slots go; nobody was reaped (every staying VM kept renewing).
        left = {a.settings.vm_name for a in leaving}
        assert all(h not in left for h in slot_holders(cluster, namespace).values())
        assert sum(a.reaper.reaped for a in agents if a.reaper) == 0
    finally:
        await asyncio.gather(*(a.stop() for a in agents if a.reconciler is not None), return_exceptions=True)
