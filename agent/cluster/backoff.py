"""Bounded, jittered, doubling delays between retries (the one retry policy the agent has)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agent.cluster.errors import ClusterError, Unavailable

T = TypeVar("T")


class Backoff:
    """`next()` returns base, 2*base, 4*base, ... up to cap, each jittered by ±jitter; `reset()` starts over."""

    def __init__(self, base: float, cap: float, jitter: float = 0.2,
                 rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self._rand = rand
        self._attempt = 0

    def next(self, cap: float | None = None) -> float:
        limit = self.cap if cap is None else min(cap, self.cap)
        delay = min(limit, self.base * 2.0**self._attempt)
        self._attempt += 1
        return delay * (1 - self.jitter + 2 * self.jitter * self._rand())

    def reset(self) -> None:
        self._attempt = 0


def jittered(interval: float, fraction: float = 0.2, rand: Callable[[], float] = random.random) -> float:
    """An interval shortened by up to `fraction`, so that a fleet of agents does not resync in lock-step
    and the configured interval stays an upper bound (an operator's edit is undone within it)."""
    return interval * (1 - fraction * rand())


async def retry_transient(call: Callable[[], Awaitable[T]], backoff: Backoff | None = None) -> T:
    """Call until it succeeds or fails for good: transient errors (unreachable, 5xx, 429) are retried, after the
    server's Retry-After when it gave one. For work that must finish, bounded by the caller's deadline (the
    clean-up at shutdown: when a whole fleet stops at once, no peer is left to finish it)."""
    backoff = backoff or Backoff(base=0.1, cap=1.0)
    while True:
        try:
            return await call()
        except ClusterError as exc:
            if not exc.transient:
                raise
            delay = backoff.next()
            if isinstance(exc, Unavailable) and exc.retry_after:
                delay = max(delay, min(exc.retry_after, 2.0))
            await asyncio.sleep(delay)
