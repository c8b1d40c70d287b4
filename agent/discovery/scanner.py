"""One discovery pass: listeners, probes, addresses, and the policy's decisions.

What each socket speaks is remembered (agent/discovery/probe_memory.py): a steady host costs one netlink dump.
Each listener's decision is handed on as soon as its own probe has decided (`on_progress`), so a silent
listener never holds up the registration of the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.discovery import addresses, listeners
from agent.discovery.addresses import AddressChoice
from agent.discovery.identify import NOT_PROBED, Identity, identify
from agent.discovery.listeners import Listener
from agent.discovery.policy import ListenerDecision, decide, is_reachable
from agent.discovery.probe_memory import ProbeMemory
from agent.discovery.processes import ProcessNames

MAX_CONCURRENT_PROBES = 32


@dataclass(frozen=True)
class DiscoveryReport:
    addresses: AddressChoice
    decisions: tuple[ListenerDecision, ...]
    processes: Mapping[int, str]  # socket inode -> process name, where visible

    def process_of(self, listener: Listener) -> str:
        return self.processes.get(listener.inode, "")


Progress = Callable[[DiscoveryReport], Awaitable[None]]


class Scanner:
    """Discovery with memory: probe results and process names cached per socket."""

    def __init__(self, probe_timeout: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 proc: Path = Path("/proc")) -> None:
        self.probe_timeout = probe_timeout
        self._memory = ProbeMemory(clock)
        self._names = ProcessNames(proc)
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)

    def forget_unprobed(self) -> None:
        """Probe again, at the next pass, the sockets that were not probed
        (their protocol not allowed then)."""
        self._memory.forget_unprobed()

    async def _probe(self, listener: Listener, allow: Mapping[str, str]) -> tuple[Listener, Identity]:
        async with self._limit:
            identity = await identify(listener, allow, self.probe_timeout)
        self._memory.record(listener, identity)
        return listener, identity

    async def discover(self, allow: Mapping[str, str], *, address: str = "", interface: str = "",
                       cidr: str = "", scan: bool = True, on_progress: Progress | None = None,
                       own: Collection[int] = ()) -> DiscoveryReport:
        """The VM's address and, with `scan`, its listeners and what each one is.

        `on_progress` is awaited with the decisions so far whenever a probe has just found a listener that is
        to be registered; the returned report is the whole pass. `own`: socket inodes of the agent's own
        listeners (its metrics listener), which are neither probed nor reported.
        """
        choice = addresses.choose_address(addresses.address_candidates(), address=address,
                                          interface=interface, cidr=cidr)
        local = {c.address for c in choice.candidates}
        found = [lst for lst in listeners.scan_listeners() if lst.inode not in own] if scan else []
        self._memory.keep_only(found)
        names = self._names.lookup(lst.inode for lst in found)
        known: dict[Listener, Identity] = {}
        due: list[Listener] = []
        for lst in found:
            recalled = self._memory.recall(lst)
            if not is_reachable(lst, local) or lst.is_loopback:
                # Decided by its address alone: nothing is registered there, so nothing is connected to.
                known[lst] = NOT_PROBED
            elif recalled is None:
                due.append(lst)
            else:
                known[lst] = recalled

        def report() -> DiscoveryReport:
            decisions = tuple(
                decide(lst, known[lst].protocol, allow, choice.address, local=local,
                       unsettled=known[lst].unsettled or known[lst].silent,
                       probed=known[lst].probed)
                for lst in found if lst in known
            )
            return DiscoveryReport(choice, decisions, names)

        probes = [asyncio.create_task(self._probe(lst, allow), name=f"probe:{lst.address}:{lst.port}")
                  for lst in due]
        try:
            for next_done in asyncio.as_completed(probes):
                lst, identity = await next_done
                known[lst] = identity
                if on_progress is not None and allow.get(identity.protocol) and not identity.unsettled:
                    await on_progress(report())
        finally:
            for task in probes:  # cancelled mid-pass (the agent stops): no probe outlives the pass
                task.cancel()
        return report()
