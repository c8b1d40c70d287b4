"""Bounded, jittered, doubling delays between retries, honouring the server's Retry-After.

Each loop that retries keeps its own Backoff, with a base and cap that fit what it retries (a Lease renewal
must retry well within its duration, a token renewal may wait minutes); what they share is here: doubling,
jitter so a fleet does not retry in step, a reset on success, and at least the wait the apiserver asked for.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.cluster.errors import ClusterError, Unavailable

T = TypeVar("T")


class Backoff:
    """`next()` returns base, 2*base, 4*base, ... up to cap, each jittered by ±jitter; `reset()` starts over.
    With `after`, the error that makes this a retry: at least its Retry-After (a 429 from the apiserver's
    priority and fairness, a 503), up to `longest_wait` (the cap unless said), so that a loop never retries
    sooner than the server asked nor later than it may."""

    def __init__(self, base: float, cap: float, jitter: float = 0.2,
                 rand: Callable[[], float] = random.random, longest_wait: float | None = None) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self.longest_wait = cap if longest_wait is None else longest_wait  # the longest Retry-After honoured
        self._rand = rand
        self._attempt = 0

    def next(self, cap: float | None = None, after: ClusterError | None = None) -> float:
        limit = self.cap if cap is None else min(cap, self.cap)
        delay = min(limit, self.base * 2.0**self._attempt)
        self._attempt += 1
        delay *= 1 - self.jitter + 2 * self.jitter * self._rand()
        if isinstance(after, Unavailable) and after.retry_after:
            delay = max(delay, min(after.retry_after, self.longest_wait))
        return delay

    def reset(self) -> None:
        self._attempt = 0


def jittered(interval: float, fraction: float = 0.2, rand: Callable[[], float] = random.random) -> float:
    """An interval shortened by up to `fraction`, so that a fleet of agents does not resync in lock-step
    and the configured interval stays an upper bound (an operator's edit is undone within it)."""
    return interval * (1 - fraction * rand())


async def retry_transient(call: Callable[[], Awaitable[T]], backoff: Backoff | None = None) -> T:
    """Call until it succeeds or fails for good: transient errors (unreachable, 5xx, 429) are retried, after
    the server's Retry-After when it gave one. For work that must finish, bounded by the caller's deadline
    (the clean-up at shutdown: when a whole fleet stops at once, no peer is left to finish it)."""
    backoff = backoff or Backoff(base=0.1, cap=1.0, longest_wait=2.0)
    while True:
        try:
            return await call()
        except ClusterError as exc:
            if not exc.transient:
                raise
            await asyncio.sleep(backoff.next(after=exc))
