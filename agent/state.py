"""Desired state: what this VM should have registered in the cluster. Discovery writes it; sync reads it."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from agent.discovery.addresses import IPAddress


@functools.total_ordering
@dataclass(frozen=True)
class Registration:
    """One service port of this VM, at one address. Ordered by service, port, protocol, then address with IPv4
    first (the dataclass's own order compared an IPv4 with an IPv6 address and raised: a dual-stack VM's
    /metrics and /v1/services failed)."""

    service: str
    port: int
    protocol: str
    address: IPAddress
    ready: bool = True

    @property
    def family(self) -> int:
        return self.address.version

    def _order(self) -> tuple[str, int, str, int, int, bool]:
        return self.service, self.port, self.protocol, self.address.version, int(self.address), self.ready

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Registration):
            return NotImplemented
        return self._order() < other._order()


def group_by_service(registrations: Iterable[Registration]) -> dict[str, list[Registration]]:
    """Registrations per service name, each group ordered by address family, then the rest."""
    grouped: dict[str, list[Registration]] = {}
    for r in sorted(registrations, key=lambda r: (r.service, r.family, r)):
        grouped.setdefault(r.service, []).append(r)
    return grouped


class DesiredState:
    """The current set of registrations, and the VM's addresses in the order it advertises them (the
    advertised one, then the other candidates as `hostname -I` lists them: a backend that takes one address
    per family takes the first it can). Replacing them tells whether anything changed."""

    def __init__(self) -> None:
        self._registrations: frozenset[Registration] = frozenset()
        self.preferred: tuple[IPAddress, ...] = ()

    @property
    def registrations(self) -> frozenset[Registration]:
        return self._registrations

    def replace(self, registrations: Iterable[Registration], *,
                preferred: Sequence[IPAddress] | None = None) -> bool:
        new = frozenset(registrations)
        order = self.preferred if preferred is None else tuple(dict.fromkeys(preferred))
        changed = new != self._registrations or order != self.preferred
        self._registrations, self.preferred = new, order
        return changed


class VanishTracker:
    """Follows what discovery sees. A registration that vanished (server stopped, port changed) stays,
    marked not ready, for `grace` seconds before it is dropped, so a restart does not churn the cluster.
    One whose address left the VM is dropped at once: nothing can be reached there any more.
    """

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._vanished: dict[Registration, float] = {}  # keyed by the ready=True form -> when it vanished
        self._previous: frozenset[Registration] = frozenset()

    def update(self, seen: Iterable[Registration], local_addresses: Collection[object]) -> list[Registration]:
        now = self._clock()
        current = frozenset(seen)
        for gone in self._previous - current:
            self._vanished.setdefault(gone, now)
        for key in list(self._vanished):
            if (key in current or now - self._vanished[key] >= self.grace
                    or key.address not in local_addresses):
                del self._vanished[key]
        self._previous = current | self._vanished.keys()
        return [*current, *(dataclasses.replace(r, ready=False) for r in self._vanished)]
