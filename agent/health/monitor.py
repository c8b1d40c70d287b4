"""One service's health over time: a check run on an interval, with rise/fall thresholds against flapping.

- Before any result the status is critical, as in Consul: an endpoint nobody has checked is not advertised
  as ready (not even on the word of discovery's probe).
- The very first result decides at once (rise does not apply to it), so a healthy server is ready after one
  check rather than `rise` of them. After that, `fall` consecutive failures make a passing status critical
  and `rise` consecutive successes make a critical one passing again.
- While passing, a failure is confirmed quickly: the next check runs after interval/2, not interval. A killed
  server is then critical within interval + (fall-1)*interval/2 (1.5 s at interval 1 s, fall 2).
- A definite failure (the check read it as a fact, e.g. no listener in the socket table, rather than a probe
  that may have been unlucky) makes a passing status critical at once: `fall` is against flapping probes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from agent.health.checks import CheckResult

Status = Literal["passing", "critical"]
PASSING: Status = "passing"
CRITICAL: Status = "critical"


def _ignore(status: Status) -> None:
    pass


class HealthMonitor:
    """Runs `check` every `interval` seconds (start to start) and keeps the thresholded status.

    The monitor does not own the check: whoever built it closes it.
    """

    def __init__(self, check: Callable[[], Awaitable[CheckResult]], *, interval: float, rise: int = 2,
                 fall: int = 2, on_change: Callable[[Status], None] = _ignore,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"check interval must be longer than zero, got {interval!r}")
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, got rise={rise}, fall={fall}")
        self._check = check
        self.interval, self.rise, self.fall = interval, rise, fall
        self._on_change = on_change
        self._sleep = sleep
        self._clock = clock
        self.status: Status = CRITICAL
        self.last_result: CheckResult | None = None
        self.last_change = clock()  # monotonic time of the last flip (or of the start)
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        self.checks = 0  # results so far
        self.failures = 0  # failing results so far
        self.first_result = asyncio.Event()

    async def run(self) -> None:
        """Check forever (until cancelled)."""
        while True:
            started = self._clock()
            await self.check_once()
            # Sleep even when the check overran (delay 0): the loop must yield to others.
            await self._sleep(max(0.0, started + self.next_delay() - self._clock()))

    async def check_once(self) -> CheckResult:
        result = await self._check()
        self._record(result)
        return result

    def next_delay(self) -> float:
        """Seconds from the start of the last check to the start of the next one."""
        if self.status == PASSING and self.consecutive_failures:
            return self.interval / 2  # confirm a failure quickly: a dead server must not stay ready long
        return self.interval

    def _record(self, result: CheckResult) -> None:
        first = self.last_result is None
        self.last_result = result
        self.checks += 1
        self.first_result.set()
        if result.ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if self.status == CRITICAL and (first or self.consecutive_successes >= self.rise):
                self._flip(PASSING)
        else:
            self.failures += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self.status == PASSING and (self.consecutive_failures >= self.fall or result.definite):
                self._flip(CRITICAL)

    def _flip(self, status: Status) -> None:
        self.status = status
        self.last_change = self._clock()
        self._on_change(status)
