"""Root tasks: created in one place, named, and guarded so that an unexpected end is never silent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog


class RootTasks:
    """Named long-running tasks. If one ends while it should still run, `on_failure` is told why."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger, on_failure: Callable[[str], None]) -> None:
        self._log = log
        self._on_failure = on_failure
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._guard)

    def alive(self) -> bool:
        return all(not t.done() for t in self._tasks.values())

    def _guard(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}" if exc else "returned"
        self._log.error("task ended unexpectedly", task=task.get_name(), error=why, exc_info=exc)
        self._on_failure(f"task {task.get_name()} ended unexpectedly ({why})")

    async def cancel(self, *names: str) -> None:
        """Cancel the named tasks (all when none are named) and wait until they have finished."""
        self._stopping = True
        chosen = [self._tasks.pop(n) for n in (names or list(self._tasks)) if n in self._tasks]
        for task in chosen:
            task.cancel()
        await asyncio.gather(*chosen, return_exceptions=True)
