"""The discovery loop and a reload never run a discovery pass at the same time (they raced on the monitors)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config import load_settings
from agent.daemon.agent import Agent
from agent.discovery.addresses import AddressChoice
from agent.discovery.scanner import DiscoveryReport


class OverlapScanner:
    """A scanner that takes a few loop turns per pass and counts passes running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most_at_once = 0
        self.passes = 0
        self.probe_timeout = 1.0

    def forget_unprobed(self) -> None:
        pass

    async def discover(self, allow: Mapping[str, str], **_: Any) -> DiscoveryReport:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            for _turn in range(5):
                await asyncio.sleep(0)
            self.passes += 1
            return DiscoveryReport(AddressChoice(None, "", "no address", ()), (), {})
        finally:
            self.running -= 1


async def test_reload_and_the_discovery_loop_take_turns(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    config = tmp_path / "config.toml"
    config.write_text(f'vm_name = "vm-a"\nstate_dir = "{tmp_path}"\n[cluster]\nserver = "https://10.0.0.1:6443"\n'
                      f'token_file = "{token}"\n[api]\nsocket = "{tmp_path / "agent.sock"}"\n')
    agent = Agent(load_settings(config), config_path=str(config))
    scanner = OverlapScanner()
    agent.local.scanner = scanner  # type: ignore[assignment]
    try:
        await asyncio.gather(agent.discover_once(), agent.reload(), agent.discover_once(), agent.reload())
    finally:
        await agent.health.close()
    assert scanner.passes == 4
    assert scanner.most_at_once == 1
