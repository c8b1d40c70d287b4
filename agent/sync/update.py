"""The one conflict-safe write path of every backend: read, decide, write at the version read.

A caller says what it wants of the object as it is now (`decide(current)` -> Put, Delete, PatchStatus or None
for "as wanted"). The write carries the resourceVersion that was read, so a concurrent change fails with 409;
then, as when the object was created or deleted meanwhile, it is read again and decided again, after a short
jittered pause, a bounded number of times. Past the bound it is a Conflict, and the reconciler retries later.
`decide` may raise (an object that is not ours): that ends the update at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent.cluster.backoff import Backoff
from agent.cluster.errors import Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.resources import Resource

Body = dict[str, Any]
UPDATE_ATTEMPTS = 12


@dataclass(frozen=True)
class Put:
    """Create `body` if the object is missing, else replace it with `body` (at the version read)."""

    body: Body


@dataclass(frozen=True)
class Delete:
    """Delete the object: exactly the version read."""


@dataclass(frozen=True)
class PatchStatus:
    """Merge `status` into the status subresource, conditional on the version read."""

    status: Body


Change = Put | Delete | PatchStatus | None  # None: the object is as wanted, write nothing
Decide = Callable[[Body | None], Change]
Verb = Literal["created", "updated", "deleted", "status set", "unchanged"]


@dataclass(frozen=True)
class Outcome:
    verb: Verb
    obj: Body | None  # as the cluster holds it now; None once deleted (or when it was missing and stays so)


async def read(kube: KubeClient, resource: Resource, namespace: str, name: str) -> Body | None:
    try:
        return await kube.get(resource, namespace, name)
    except NotFound:
        return None


async def update(kube: KubeClient, resource: Resource, namespace: str, name: str, decide: Decide, *,
                 current: Body | None, attempts: int = UPDATE_ATTEMPTS, backoff: Backoff | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Outcome:
    """Make object `name` what `decide` wants of it, starting from `current` (as last read or listed; None
    when it is believed missing)."""
    backoff = backoff or Backoff(base=0.05, cap=2.0, jitter=1.0)
    for attempt in range(attempts):
        if attempt:
            await sleep(backoff.next())
            current = await read(kube, resource, namespace, name)
        change = decide(current)
        try:
            return await _write(kube, resource, namespace, name, current=current, change=change)
        except (Conflict, NotFound):
            continue  # changed, created or deleted meanwhile: read and decide again
    raise Conflict(f"{resource.qualified}/{name} kept changing under us ({attempts} attempts); will retry")


async def _write(kube: KubeClient, resource: Resource, namespace: str, name: str, *, current: Body | None,
                 change: Change) -> Outcome:
    if change is None:
        return Outcome("unchanged", current)
    if isinstance(change, Put):
        if current is None:
            return Outcome("created", await kube.create(resource, namespace, change.body))
        metadata = {**change.body.get("metadata", {}),
                    "resourceVersion": current["metadata"]["resourceVersion"]}
        return Outcome("updated", await kube.replace(resource, namespace, name,
                                                     {**change.body, "metadata": metadata}))
    if current is None:
        return Outcome("unchanged", None)  # nothing to delete, nothing to set the status of: it is gone
    version = current["metadata"]["resourceVersion"]
    if isinstance(change, Delete):
        await kube.delete(resource, namespace, name, resource_version=version)
        return Outcome("deleted", None)
    patch = {"metadata": {"resourceVersion": version}, "status": change.status}
    return Outcome("status set", await kube.patch_status(resource, namespace, name, patch))
