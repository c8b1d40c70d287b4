"""The reconciler's failure handling: what it logs at which level, and how long it waits before retrying."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, cast

import pytest
import structlog
from structlog.testing import capture_logs

from agent.cluster.backoff import Backoff
from agent.cluster.errors import ClusterError, Forbidden, Invalid, Unavailable
from agent.state import DesiredState, Registration
from agent.sync.backends.backend import Backend
from agent.sync.failures import ServiceFailures
from agent.sync.reconciler import Reconciler


class ScriptedBackend:
    """Fails with the scripted errors in order, then succeeds."""

    def __init__(self, *failures: ClusterError) -> None:
        self.failures = list(failures)

    async def sync(self, registrations: Collection[Registration]) -> None:
        if self.failures:
            raise self.failures.pop(0)


def reconciler(backend: Any) -> Reconciler:
    return Reconciler(backend, DesiredState(), resync_interval=300.0, log=structlog.get_logger(),
                      backoff=Backoff(base=1.0, cap=10.0, jitter=0.0))


async def test_a_busy_apiserver_is_a_warning_and_a_refusal_an_error() -> None:
    busy = Unavailable("list endpointslices.discovery.k8s.io: Too many requests, please try again later.")
    refused = Forbidden("cannot create leases.coordination.k8s.io: grant it with the Role in rbac.yaml")
    loop = reconciler(ScriptedBackend(busy, busy, refused))
    with capture_logs() as logs:
        delays = [await loop.sync_once() for _ in range(4)]
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "sync failed"), ("error", "sync failed"), ("info", "sync recovered")]
    assert logs[0]["retry_in_seconds"] == 1.0
    # Transient failures back off up to 2 s; a new kind of failure starts its backoff afresh.
    assert delays[:3] == [1.0, 2.0, 1.0]
    assert 240.0 <= delays[3] <= 300.0
    assert loop.errors == 3 and loop.last_error == ""


async def test_each_failing_service_is_reported_on_its_own_and_the_others_count_as_registered() -> None:
    rejected = Invalid('create services/3db rejected: metadata.name: Invalid value: "3db": a DNS-1035 label')
    busy = Unavailable("create services/web: Too many requests")
    loop = reconciler(ScriptedBackend(ServiceFailures({"3db": rejected, "web": busy}),
                                      ServiceFailures({"3db": rejected})))
    with capture_logs() as logs:
        await loop.sync_once()
        await loop.sync_once()
        await loop.sync_once()
    assert [(e["log_level"], e["event"], e.get("service")) for e in logs] == [
        ("error", "sync failed", "3db"), ("warning", "sync failed", "web"),  # one line per service
        ("info", "sync recovered", "web"),  # the same error of 3db again: not repeated
        ("info", "sync recovered", None)]
    assert logs[0]["error"] == str(rejected)
    assert loop.service_errors == {} and loop.registered("mysqldb") and loop.registered("3db")


async def test_while_only_some_services_fail_the_others_are_registered() -> None:
    rejected = Invalid("create services/3db rejected")
    loop = reconciler(ScriptedBackend(ServiceFailures({"3db": rejected}), Unavailable("connection refused")))
    await loop.sync_once()
    assert loop.service_errors == {"3db": str(rejected)}
    assert loop.registered("mysqldb") and not loop.registered("3db")
    await loop.sync_once()  # the whole run fails: nothing is known of any service
    assert not loop.registered("mysqldb") and loop.service_errors == {}


class FakeTime:
    """The reconciler's clock and waits, under the test's control: each wait either runs out (time advances by
    its delay) or is cut short by a poke scripted for a moment inside it."""

    def __init__(self, pokes: list[float], stop_after: int) -> None:
        self.now = 0.0
        self.pokes = pokes  # moments at which someone pokes the reconciler
        self.waits: list[tuple[float, float]] = []  # (when the wait began, its delay)
        self.stop_after = stop_after

    def clock(self) -> float:
        return self.now

    async def wait(self, trigger: asyncio.Event, delay: float) -> None:
        if len(self.waits) == self.stop_after:
            raise asyncio.CancelledError
        self.waits.append((self.now, delay))
        due = [p for p in self.pokes if self.now <= p < self.now + delay]
        if trigger.is_set():
            return
        if due:
            self.pokes.remove(due[0])
            self.now = due[0]
        else:
            self.now += delay


async def test_the_loop_resyncs_on_its_interval_runs_at_once_when_poked_and_backs_off_on_failures() -> None:
    busy = Unavailable("cannot reach https://198.18.0.1:6443: timed out")
    time_ = FakeTime(pokes=[100.0], stop_after=6)
    loop = Reconciler(cast(Backend, ScriptedBackend(busy, busy)), DesiredState(), resync_interval=300.0,
                      log=structlog.get_logger(), backoff=Backoff(base=1.0, cap=10.0, jitter=0.0), clock=time_.clock,
                      wait=time_.wait, rand=lambda: 0.5)
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    assert time_.waits == [
        (0.0, 0.0),  # the first sync at once: it fails (unreachable) ...
        (0.0, 1.0),  # ... and is retried after 1 s, then 2 s (transient failures are capped at 2 s)
        (1.0, 2.0),
        (3.0, 270.0),  # it succeeded at t=3: the next resync is the interval, jittered (0.9 of 300 here)
        (100.0, 270.0),  # a poke at t=100 ran a sync at once, and the interval starts again from there
        (370.0, 270.0),
    ]
    assert loop.last_success == 640.0
    assert loop.runs == 6 and loop.errors == 2


async def test_each_sync_run_reports_its_duration_failed_or_not() -> None:
    durations: list[float] = []
    loop = Reconciler(cast(Backend, ScriptedBackend(Unavailable("connection refused"))), DesiredState(),
                      resync_interval=300.0, log=structlog.get_logger(), on_duration=durations.append)
    await loop.sync_once()
    await loop.sync_once()
    assert len(durations) == 2 and all(d >= 0 for d in durations)


async def test_reachable_means_the_cluster_answered_not_that_the_sync_passed() -> None:
    lost = Unavailable("cannot reach https://198.18.0.1:6443: timed out")  # no HTTP status: no answer
    busy = Unavailable("list endpointslices.discovery.k8s.io: overloaded", status=429)
    refused = Forbidden("cannot create leases.coordination.k8s.io", status=403)
    loop = reconciler(ScriptedBackend(lost, busy, refused, ServiceFailures({"a": lost, "b": lost}),
                                      ServiceFailures({"a": lost, "b": refused})))
    assert loop.reached is False  # before any sync
    seen = []
    for _ in range(6):
        await loop.sync_once()
        seen.append(loop.reached)
    assert seen == [False, True, True, False, True, True]
