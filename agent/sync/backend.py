"""What every backend offers the reconciler."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from agent.state import Registration


class Backend(Protocol):
    async def sync(self, registrations: Collection[Registration]) -> None:
        """Make the cluster hold exactly these registrations for this VM (full compare, idempotent)."""

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        """Tell consumers the endpoints are going away (before they are removed)."""

    async def remove_all(self) -> None:
        """Remove every object this VM owns; shared objects (the Service) stay."""

