"""The one loop that makes the cluster match the desired state.

Consul's anti-entropy shape: a collapsing trigger (many pokes, one run) for changes, plus a jittered
periodic full resync that also repairs edits and deletions made by others. Failures are retried with a
bounded backoff; a failure is logged once per distinct message, so a missing RBAC grant is one line,
not a flood.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from agent.backoff import Backoff, jittered
from agent.cluster.errors import ClusterError
from agent.state import DesiredState
from agent.sync.backend import Backend


class Reconciler:
    def __init__(self, backend: Backend, state: DesiredState, *, resync_interval: float,
                 log: structlog.typing.FilteringBoundLogger, backoff: Backoff | None = None,
                 on_done: Callable[[], None] = lambda: None) -> None:
        self._backend = backend
        self._state = state
        self.resync_interval = resync_interval
        self._log = log
        self._backoff = backoff or Backoff(base=0.25, cap=10.0)
        self._trigger = asyncio.Event()
        self.first_attempt_done = asyncio.Event()
        self.last_success: float | None = None  # monotonic
        self.last_error = ""
        self.runs = 0
        self.errors = 0
        self._last_error_type: type[ClusterError] | None = None
        self._on_done = on_done

    def poke(self) -> None:
        """Ask for a sync soon; pokes that arrive while one is pending collapse into it."""
        self._trigger.set()

    async def run(self) -> None:
        delay = 0.0
        while True:
            try:
                async with asyncio.timeout(delay):
                    await self._trigger.wait()
            except TimeoutError:
                pass
            self._trigger.clear()
            delay = await self.sync_once()

    async def sync_once(self) -> float:
        """One full sync; returns how long to wait before the next one unless poked."""
        self.runs += 1
        try:
            await self._backend.sync(self._state.registrations)
        except ClusterError as exc:
            self.errors += 1
            message = str(exc)
            if type(exc) is not self._last_error_type:
                # A new kind of failure starts its backoff afresh: a 403 while a restarted apiserver is still
                # loading RBAC must not inherit the long delay that a minute of refused connections built up.
                self._backoff.reset()
                self._last_error_type = type(exc)
            # Unreachable clusters are cheap to re-try and must be caught the moment they are back.
            delay = self._backoff.next(cap=2.0 if exc.transient else None)
            if message != self.last_error:
                # An unreachable or busy apiserver (timeouts, 429, 503) is retried and usually passes: a warning.
                # Anything else (403, 422, …) needs someone to act: an error.
                report = self._log.warning if exc.transient else self._log.error
                report("sync failed", error=message, retry_in_seconds=round(delay, 2))
            self.last_error = message
            return delay
        finally:
            self.first_attempt_done.set()
            self._on_done()
        if self.last_error:
            self._log.info("sync recovered", previous_error=self.last_error)
        self.last_error = ""
        self._last_error_type = None
        self.last_success = time.monotonic()
        self._backoff.reset()
        return jittered(self.resync_interval)
