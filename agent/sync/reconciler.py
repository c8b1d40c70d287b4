"""The one loop that makes the cluster match the desired state.

Consul's anti-entropy shape: a collapsing trigger (many pokes, one run) for changes, plus a jittered
periodic full resync that also repairs edits and deletions made by others. Failures are retried with a
bounded backoff; a failure is logged once per distinct message, so a missing RBAC grant is one line,
not a flood.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from agent.cluster.backoff import Backoff, jittered
from agent.cluster.errors import ClusterError, Unavailable
from agent.state import DesiredState
from agent.sync.backends.backend import Backend
from agent.sync.failures import ServiceFailures


async def wait_for_trigger(trigger: asyncio.Event, delay: float) -> None:
    """Until `trigger` is set or `delay` seconds have passed, whichever is first."""
    try:
        async with asyncio.timeout(delay):
            await trigger.wait()
    except TimeoutError:
        pass


class Reconciler:
    def __init__(self, backend: Backend, state: DesiredState, *, resync_interval: float,
                 log: structlog.typing.FilteringBoundLogger, backoff: Backoff | None = None,
                 on_done: Callable[[], None] = lambda: None,
                 on_duration: Callable[[float], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[asyncio.Event, float], Awaitable[None]] = wait_for_trigger,
                 rand: Callable[[], float] = random.random) -> None:
        self._backend = backend
        self._state = state
        self.resync_interval = resync_interval
        self._log = log
        self._backoff = backoff or Backoff(base=0.25, cap=10.0)
        self._trigger = asyncio.Event()
        self.first_attempt_done = asyncio.Event()
        self.last_success: float | None = None  # monotonic
        self.last_error = ""
        self.service_errors: dict[str, str] = {}  # of the last sync, when only some services failed
        # the cluster answered the last sync (a success, or a refusal: not a lost connection)
        self.reached = False
        self.runs = 0
        self.errors = 0
        self._last_error_type: type[ClusterError] | None = None
        self._on_done = on_done
        self._on_duration = on_duration  # seconds of each sync run, failed ones included
        self._clock, self._wait, self._rand = clock, wait, rand

    def poke(self) -> None:
        """Ask for a sync soon; pokes that arrive while one is pending collapse into it."""
        self._trigger.set()

    async def run(self) -> None:
        delay = 0.0
        while True:
            await self._wait(self._trigger, delay)
            self._trigger.clear()
            delay = await self.sync_once()

    async def sync_once(self) -> float:
        """One full sync; returns how long to wait before the next one unless poked."""
        self.runs += 1
        started = time.perf_counter()
        try:
            await self._backend.sync(self._state.registrations)
        except ClusterError as exc:
            self.errors += 1
            self.reached = not unreachable(exc)
            message = str(exc)
            self._report_services(exc)
            if type(exc) is not self._last_error_type:
                # A new kind of failure starts its backoff afresh: a 403 while a restarted apiserver is still
                # loading RBAC must not inherit the long delay that a minute of refused connections built up.
                self._backoff.reset()
                self._last_error_type = type(exc)
            # Unreachable clusters are cheap to re-try and must be caught the moment they are back.
            delay = self._backoff.next(cap=2.0 if exc.transient else None, after=exc)
            if message != self.last_error and not isinstance(exc, ServiceFailures):
                # An unreachable or busy apiserver (timeouts, 429, 503) is retried and usually passes: a
                # warning. Anything else (403, 422, …) needs someone to act: an error.
                report = self._log.warning if exc.transient else self._log.error
                report("sync failed", error=message, retry_in_seconds=round(delay, 2))
            self.last_error = message
            return delay
        finally:
            self._on_duration(time.perf_counter() - started)
            self.first_attempt_done.set()
            self._on_done()
        if self.last_error:
            self._log.info("sync recovered", previous_error=self.last_error)
        self.last_error = ""
        self.service_errors = {}
        self._last_error_type = None
        self.reached = True
        self.last_success = self._clock()
        self._backoff.reset()
        return jittered(self.resync_interval, rand=self._rand)

    def registered(self, service: str) -> bool:
        """Whether the last sync wrote `service`: it succeeded, or failed only for other services."""
        if not self.last_error:
            return self.last_success is not None
        return bool(self.service_errors) and service not in self.service_errors

    def failing(self, service: str) -> bool:
        """Whether the last sync failed for `service`: a whole sync that failed failed for every service; a
        partial failure names its services."""
        return bool(self.last_error) and (not self.service_errors or service in self.service_errors)

    def _report_services(self, exc: ClusterError) -> None:
        """Each failing service on its own line, once per distinct error. A failure of the whole run (the
        Lease, the list) says nothing of any one service."""
        failures = exc.errors if isinstance(exc, ServiceFailures) else {}
        for name, error in sorted(failures.items()):
            if self.service_errors.get(name) != str(error):
                # As for the whole run: a busy or unreachable apiserver is a warning, anything else an error.
                report = self._log.warning if error.transient else self._log.error
                report("sync failed", service=name, error=str(error))
        for name in sorted(self.service_errors.keys() - failures.keys()) if failures else ():
            self._log.info("sync recovered", service=name, previous_error=self.service_errors[name])
        self.service_errors = {name: str(error) for name, error in failures.items()}


def unreachable(exc: ClusterError) -> bool:
    """No answer from the apiserver (refused, reset, timed out), as opposed to an answer that refuses: for
    every service, when the failure is per service."""
    if isinstance(exc, ServiceFailures):
        return all(unreachable(e) for e in exc.errors.values())
    return isinstance(exc, Unavailable) and exc.status == 0
