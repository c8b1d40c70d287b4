"""Anti-entropy without polling: watch this VM's own objects and act when someone else changes them.

Shaped after client-go's reflector, without a cache: the first watches start from the version of the first
sync's list (a list, then a watch from its version: nothing in between is missed, nothing is sent twice);
each resumes from the last resourceVersion it saw (bookmarks keep that fresh); after a 410, or without a
version to start from, a watch starts from "now" (the server first sends what exists, as ADDED, and once it
has accepted the watch the reconciler compares once, which covers what was deleted before).

An event whose object is exactly a version the agent wrote or read is an echo and ignored; any other goes
to its target's handler, which pokes the reconciler (whose full compare repairs the difference) or, for the
Lease, recreates it. The periodic resync stays, as a slow backstop for what a watch could still miss.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from agent.cluster.backoff import Backoff
from agent.cluster.errors import ClusterError, Gone
from agent.cluster.kube import KubeClient
from agent.cluster.resources import Resource

Body = dict[str, Any]
Handler = Callable[[str, Body], Awaitable[None]]
# Watches last this long (chosen at random in the range, so a fleet does not reconnect in step).
WATCH_SECONDS = (300, 600)


@dataclass(frozen=True)
class WatchTarget:
    resource: Resource
    handle: Handler  # called with (event type, object) for every event that is not an echo
    label_selector: str = ""
    field_selector: str = ""
    # Called when a watch from scratch has been accepted: what was deleted before it shows in no event, so
    # the owner compares once (for the reconciler: one sync).
    on_fresh: Callable[[], None] | None = None

    @property
    def what(self) -> str:
        selector = ",".join(s for s in (self.label_selector, self.field_selector) if s)
        return f"{self.resource.qualified}" + (f" ({selector})" if selector else "")


class OwnObjectsWatcher:
    """One long-lived watch per target, each on its own connection (HTTP/1.1: a watch holds one)."""

    def __init__(self, kube: KubeClient, namespace: str, targets: Sequence[WatchTarget], *,
                 log: structlog.typing.FilteringBoundLogger,
                 start_version: Callable[[], str] = lambda: "") -> None:
        self._kube = kube
        self._start_version = start_version  # where the first watches start: after what the first sync read
        self.namespace = namespace
        self.targets = tuple(targets)
        self._log = log
        self.events = 0  # events handled (not echoes), for metrics and tests

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(t) for t in self.targets))

    async def _follow(self, target: WatchTarget) -> None:
        version = self._start_version()
        backoff = Backoff(base=0.5, cap=10.0)
        last_error = ""
        while True:
            try:
                async for kind, obj in self._kube.watch(
                        target.resource, self.namespace, label_selector=target.label_selector,
                        field_selector=target.field_selector, resource_version=version,
                        timeout_seconds=random.randint(*WATCH_SECONDS),
                        on_open=None if version else target.on_fresh):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if last_error:
                        self._log.info("watch of own objects recovered", watch=target.what)
                        last_error = ""
                    backoff.reset()
                    if kind == "BOOKMARK" or self._kube.knows(target.resource, obj):
                        continue
                    self.events += 1
                    await target.handle(kind, obj)
            except Gone:
                version = ""  # too old to resume: start over; the server sends every object again as ADDED
            except ClusterError as exc:
                if str(exc) != last_error:
                    self._log.warning("watch of own objects interrupted; the periodic resync still repairs",
                                      watch=target.what, error=str(exc))
                last_error = str(exc)
                await asyncio.sleep(backoff.next(cap=2.0 if exc.transient else None, after=exc))
