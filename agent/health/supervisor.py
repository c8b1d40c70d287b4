"""One health monitor per registration: started when it appears, stopped (and its check closed) when it goes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from agent.config import CheckSettings
from agent.health import Check, CheckResult, HealthMonitor, Status, build_check
from agent.state import Registration


@dataclass
class _Watched:
    settings: CheckSettings
    check: Check
    monitor: HealthMonitor
    task: asyncio.Task[None]


class HealthSupervisor:
    def __init__(self, settings_for: Callable[[Registration], CheckSettings], on_change: Callable[[], None],
                 log: structlog.typing.FilteringBoundLogger) -> None:
        self._settings_for = settings_for
        self._on_change = on_change
        self._log = log
        self._watched: dict[Registration, _Watched] = {}

    def monitor(self, registration: Registration) -> HealthMonitor | None:
        watched = self._watched.get(_key(registration))
        return watched.monitor if watched else None

    def is_ready(self, registration: Registration) -> bool:
        """Passing, or not checked yet: discovery's probe has just confirmed the service."""
        monitor = self.monitor(registration)
        return monitor is None or monitor.last_result is None or monitor.status == "passing"

    async def follow(self, registrations: Iterable[Registration]) -> None:
        """Monitor exactly these registrations (the present ones; vanished ones need no check)."""
        wanted = {_key(r) for r in registrations}
        for key in list(self._watched.keys() - wanted):
            await self._stop(key)
        for key in wanted - self._watched.keys():
            self._start(key)

    def _start(self, key: Registration) -> None:
        settings = self._settings_for(key)
        kind = settings.kind_for(key.protocol)
        check = build_check(kind, str(key.address), key.port, timeout=settings.timeout, path=settings.path,
                            command=settings.command, credentials_file=settings.credentials_file)
        log = self._log.bind(service=key.service, check=kind, target=f"{key.address}:{key.port}")

        def changed(status: Status) -> None:
            result = monitor.last_result
            (log.info if status == "passing" else log.warning)(
                "health changed", status=status, output=result.output if result else "")
            self._on_change()

        async def checked() -> CheckResult:
            result = await check()
            if monitor.last_result is None:
                # The first result may fail without flipping (the status starts critical): until now the
                # registration counted as ready on discovery's word, so it has to be re-evaluated.
                asyncio.get_running_loop().call_soon(self._on_change)
            return result

        monitor = HealthMonitor(checked, interval=settings.interval, rise=settings.rise, fall=settings.fall,
                                on_change=changed)
        task = asyncio.create_task(monitor.run(), name=f"health:{key.service}:{key.address}:{key.port}")
        self._watched[key] = _Watched(settings, check, monitor, task)

    async def _stop(self, key: Registration) -> None:
        watched = self._watched.pop(key)
        watched.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watched.task
        await watched.check.aclose()

    async def restart_changed(self) -> None:
        """After a reload: restart the monitors whose check settings changed; the others keep their history."""
        for key, watched in list(self._watched.items()):
            if self._settings_for(key) != watched.settings:
                await self._stop(key)
                self._start(key)

    async def close(self) -> None:
        for key in list(self._watched):
            await self._stop(key)


def _key(registration: Registration) -> Registration:
    return Registration(registration.service, registration.port, registration.protocol, registration.address)
