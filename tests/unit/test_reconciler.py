"""The reconciler's failure handling: what it logs at which level, and how long it waits before retrying."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import structlog
from structlog.testing import capture_logs

from agent.backoff import Backoff
from agent.cluster.errors import ClusterError, Forbidden, Invalid, Unavailable
from agent.state import DesiredState, Registration
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
