"""One discovery pass: listeners, probes, addresses, and the policy's decisions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from agent.discovery import addresses, listeners
from agent.discovery.addresses import AddressChoice
from agent.discovery.policy import WELL_KNOWN_PORTS, ListenerDecision, decide
from agent.discovery.probes import mysql


@dataclass(frozen=True)
class DiscoveryReport:
    addresses: AddressChoice
    decisions: tuple[ListenerDecision, ...]


async def identify(listener: listeners.Listener, timeout: float) -> str:
    """Probe a listener on a well-known port; return the confirmed protocol or "unknown"."""
    expected = WELL_KNOWN_PORTS.get(listener.port)
    host = listener.address
    if listener.is_wildcard:
        host = "127.0.0.1" if ":" not in host else "::1"
    if expected == "mysql" and await mysql.probe(host, listener.port, timeout) is not None:
        return "mysql"
    return "unknown"


async def discover(
    allow: Mapping[str, str], *, address: str = "", interface: str = "", cidr: str = "", probe_timeout: float = 1.0
) -> DiscoveryReport:
    choice = addresses.choose_address(addresses.address_candidates(), address=address, interface=interface,
                                      cidr=cidr)
    found = [lst for lst in listeners.scan_listeners() if WELL_KNOWN_PORTS.get(lst.port) in allow]
    protocols = await asyncio.gather(*(identify(lst, probe_timeout) for lst in found))
    decisions = tuple(decide(lst, proto, allow, choice.address) for lst, proto in zip(found, protocols, strict=True))
    return DiscoveryReport(choice, decisions)
