"""What every backend offers the reconciler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from agent.cluster.resources import Resource
from agent.state import Registration

# How a backend gets the VM's Lease, the owner its objects name (created on first use):
# the heartbeat's ensure().
LeaseGetter = Callable[[], Awaitable[dict[str, Any]]]


async def no_lease() -> dict[str, Any]:
    """For a backend that only removes objects (a one-shot deregister, a reaper's clean-up after a dead VM):
    it writes nothing, so it never needs a Lease; asking for one is a bug."""
    raise RuntimeError("this backend only removes objects: it has no Lease to write under")


class Backend(Protocol):
    @property
    def owned_by_lease(self) -> bool:
        """Whether every object this VM writes carries an ownerReference to its Lease, so that deleting the
        Lease removes them through the garbage collector (a reaper then deletes only the Lease: under the
        isolation policy no VM may delete another VM's objects). False for entries in shared objects
        (legacy Endpoints)."""

    @property
    def watched(self) -> tuple[Resource, str]:
        """The resource of this VM's own objects, and the label selector that finds them (for the watch)."""

    def affected(self, kind: str, obj: dict[str, Any]) -> bool:
        """Whether a change to `obj` that the agent did not make needs a sync of this VM."""

    async def sync(self, registrations: Collection[Registration]) -> None:
        """Make the cluster hold exactly these registrations for this VM (full compare, idempotent). Each
        service is synced on its own: the ones that failed are raised together
        (failures.ServiceFailures) after the rest."""

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        """Tell consumers the endpoints are going away (before they are removed)."""

    async def remove_all(self, lease_uid: str = "") -> list[str]:
        """Remove every object this VM owns (or its entries in shared ones); shared objects (the Service)
        stay. With `lease_uid`, only the objects whose ownerReference names that Lease (one already deleted:
        what the garbage collector is about to remove, and not a clone's that took the name since). Returns
        what was removed, as `kind/name`."""



async def remove_shared_entries(backend: Backend) -> None:
    """A reaper's clean-up after deleting a dead VM's Lease (agent/lease/reaper.py `after_reap`): the objects
    the Lease owned go with it through the garbage collector, but its entries in shared objects (legacy
    Endpoints) nobody else removes."""
    if not backend.owned_by_lease:
        await backend.remove_all()
