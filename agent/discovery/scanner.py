"""One discovery pass: listeners, probes, addresses, and the policy's decisions.

Probing: a server-speaks-first read (MySQL greeting, SSH banner) is tried on any port when MySQL is
allowed, so MySQL on a non-standard port is found; protocols where the client speaks first (PostgreSQL,
Redis, HTTP) are only probed on their well-known ports, so unknown services never receive foreign bytes.
Results are cached per socket (address, port, inode): a restarted server is probed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from agent.discovery import addresses, listeners
from agent.discovery.addresses import AddressChoice
from agent.discovery.listeners import Listener
from agent.discovery.policy import WELL_KNOWN_PORTS, ListenerDecision, decide
from agent.discovery.probes import banner, http, mysql, postgres, redis
from agent.discovery.processes import process_names

Probe = Callable[[str, int, float], Awaitable[object | None]]
MAX_CONCURRENT_PROBES = 32


@dataclass(frozen=True)
class DiscoveryReport:
    addresses: AddressChoice
    decisions: tuple[ListenerDecision, ...]
    processes: Mapping[int, str]  # socket inode -> process name, where visible

    def process_of(self, listener: Listener) -> str:
        return self.processes.get(listener.inode, "")


# Protocols where the client speaks first, probed only on their well-known ports (policy.WELL_KNOWN_PORTS).
CLIENT_FIRST_PROBES: dict[str, Probe] = {"postgres": postgres.probe, "redis": redis.probe, "http": http.probe}


class Scanner:
    """Discovery with memory: probe results cached per socket, so a steady host costs one netlink dump."""

    def __init__(self, probe_timeout: float = 1.0) -> None:
        self.probe_timeout = probe_timeout
        self._cache: dict[Listener, str] = {}
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)

    async def identify(self, listener: Listener, allow: Mapping[str, str]) -> str:
        if listener in self._cache:
            return self._cache[listener]
        async with self._limit:
            protocol = await self._identify(listener, allow)
        self._cache[listener] = protocol
        return protocol

    async def _identify(self, listener: Listener, allow: Mapping[str, str]) -> str:
        host = listener.address
        if listener.is_wildcard:
            host = "127.0.0.1" if ":" not in host else "::1"
        well_known = WELL_KNOWN_PORTS.get(listener.port)
        if well_known in CLIENT_FIRST_PROBES and well_known in allow:
            if await CLIENT_FIRST_PROBES[well_known](host, listener.port, self.probe_timeout) is not None:
                return well_known
            return "unknown"
        if "mysql" not in allow and well_known != "mysql":
            return "unknown"  # nothing allowed speaks first here: do not even connect
        greeting = await banner.read(host, listener.port, self.probe_timeout)
        if mysql.parse_greeting(greeting) is not None:
            return "mysql"
        if banner.is_ssh(greeting):
            return "ssh"
        return "unknown"

    async def discover(self, allow: Mapping[str, str], *, address: str = "", interface: str = "",
                       cidr: str = "", scan: bool = True) -> DiscoveryReport:
        """The VM's address and, with `scan`, its listeners and what each one is."""
        choice = addresses.choose_address(addresses.address_candidates(), address=address, interface=interface,
                                          cidr=cidr)
        found = listeners.scan_listeners() if scan else []
        live = set(found)
        self._cache = {k: v for k, v in self._cache.items() if k in live}
        protocols = await asyncio.gather(*(self.identify(lst, allow) for lst in found))
        decisions = tuple(decide(lst, proto, allow, choice.address)
                          for lst, proto in zip(found, protocols, strict=True))
        names = process_names([d.listener.inode for d in decisions])
        return DiscoveryReport(choice, decisions, names)
