"""The unit tests' one fake clock: time that moves only when a test (or a sleep it hands out) moves it."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Call it for the time; `advance()` moves it; `sleep()` (for code that takes a sleep function) records the
    delay, moves the time by it and yields to the loop once."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
