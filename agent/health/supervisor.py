"""One health monitor per registration: started when it appears, stopped (and its check closed) when it goes.

A registration is ready only once a check of it has passed: discovery's probe saw something answer, which is
not the same as healthy (a MariaDB refusing the VM's address answers with an error packet).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from agent.config import CheckSettings
from agent.health.build import build_check
from agent.health.checks import BrokenCheck, Check, CheckResult
from agent.health.monitor import HealthMonitor, Status
from agent.state import Registration

# Threads for blocking checks (pymysql logins) of one agent: bounded, and apart from the loop's default
# executor, which aiohttp's DNS lookups use. A check still running keeps its thread; no second one starts.
BLOCKING_CHECK_THREADS = 4
# The first sync waits this long at most for first check results: a slow check must not hold up the Lease.
FIRST_RESULTS_WAIT = 2.0


@dataclass
class _Watched:
    settings: CheckSettings
    check: Check
    monitor: HealthMonitor
    task: asyncio.Task[None]


class HealthSupervisor:
    def __init__(self, settings_for: Callable[[Registration], CheckSettings], on_change: Callable[[], None],
                 log: structlog.typing.FilteringBoundLogger, *,
                 on_checked: Callable[[Registration, float], None] = lambda _r, _s: None,
                 on_forget: Callable[[Registration], None] = lambda _r: None) -> None:
        """on_checked(registration, seconds) after each check (its duration); on_forget(registration) once the
        last monitor of its service and port has stopped."""
        self._settings_for = settings_for
        self._on_change = on_change
        self._on_checked = on_checked
        self._on_forget = on_forget
        self._log = log
        self._watched: dict[Registration, _Watched] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(BLOCKING_CHECK_THREADS,
                                                               thread_name_prefix="vmesh-check")

    def monitor(self, registration: Registration) -> HealthMonitor | None:
        watched = self._watched.get(_key(registration))
        return watched.monitor if watched else None

    def is_ready(self, registration: Registration) -> bool:
        """Passing: a check of this endpoint has passed (the first decides at once,
        later ones by rise/fall)."""
        monitor = self.monitor(registration)
        return monitor is not None and monitor.status == "passing"

    async def first_results(self, limit: float | None = FIRST_RESULTS_WAIT) -> None:
        """Until each monitored registration has had its first check result, or `limit` seconds at most (None:
        as long as the slowest check may take)."""
        waiting = [w for w in self._watched.values() if not w.monitor.first_result.is_set()]
        if not waiting:
            return
        longest = max(w.settings.timeout for w in waiting)
        waits = [asyncio.create_task(w.monitor.first_result.wait()) for w in waiting]
        try:
            # A monitor stopped meanwhile never answers: the timeout bounds the wait, it is not a failure.
            await asyncio.wait(waits, timeout=longest + 0.5 if limit is None else min(longest + 0.5, limit))
        finally:
            for wait in waits:
                wait.cancel()

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
        log = self._log.bind(service=key.service, check=kind, target=f"{key.address}:{key.port}")
        check = self._build(kind, key, settings, log)

        def changed(status: Status) -> None:
            result = monitor.last_result
            (log.info if status == "passing" else log.warning)(
                "health changed", status=status, output=result.output if result else "")
            self._on_change()

        async def checked() -> CheckResult:
            result = await check()
            self._on_checked(key, result.duration)
            if monitor.last_result is None and not result.ok:
                # Not a change (a monitor starts critical), but the admin must hear why it never became ready.
                log.warning("health check failing", output=result.output)
            return result

        monitor = HealthMonitor(checked, interval=settings.interval, rise=settings.rise, fall=settings.fall,
                                on_change=changed)
        task = asyncio.create_task(monitor.run(), name=f"health:{key.service}:{key.address}:{key.port}")
        self._watched[key] = _Watched(settings, check, monitor, task)

    def _build(self, kind: str, key: Registration, settings: CheckSettings,
               log: structlog.typing.FilteringBoundLogger) -> Check:
        """The check; one that cannot be built fails with the reason instead of taking discovery down."""
        try:
            return build_check(kind, str(key.address), key.port, timeout=settings.timeout,
                               path=settings.path_for(kind), command=settings.command,
                               credentials_file=settings.credentials_for(kind), executor=self._executor,
                               interval=settings.interval, active_interval=settings.active_interval_for(kind))
        except ValueError as exc:  # CredentialsError included: a file that became unreadable since the start
            log.error("health check cannot run; the service stays not ready", error=str(exc))
            return BrokenCheck(kind, str(exc))

    async def _stop(self, key: Registration) -> None:
        watched = self._watched.pop(key)
        watched.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watched.task
        await watched.check.aclose()
        if not any((k.service, k.port) == (key.service, key.port) for k in self._watched):
            self._on_forget(key)

    async def restart_changed(self) -> None:
        """After a reload: restart the monitors whose check settings changed;
        the others keep their history."""
        for key, watched in list(self._watched.items()):
            if self._settings_for(key) != watched.settings:
                await self._stop(key)
                self._start(key)

    async def close(self) -> None:
        for key in list(self._watched):
            await self._stop(key)
        # A login still running ends within its own socket timeouts; nobody waits for it.
        self._executor.shutdown(wait=False, cancel_futures=True)


def _key(registration: Registration) -> Registration:
    return Registration(registration.service, registration.port, registration.protocol, registration.address)
