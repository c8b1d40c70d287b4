"""Desired state: what this VM should have registered in the cluster. Discovery writes it; sync reads it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.discovery.addresses import IPAddress


@dataclass(frozen=True, order=True)
class Registration:
    """One service port of this VM, at one address."""

    service: str
    port: int
    protocol: str
    address: IPAddress
    ready: bool = True

    @property
    def family(self) -> int:
        return self.address.version


class DesiredState:
    """The current set of registrations. Replacing it tells whether anything changed."""

    def __init__(self) -> None:
        self._registrations: frozenset[Registration] = frozenset()

    @property
    def registrations(self) -> frozenset[Registration]:
        return self._registrations

    def replace(self, registrations: Iterable[Registration]) -> bool:
        new = frozenset(registrations)
        changed = new != self._registrations
        self._registrations = new
        return changed
