"""The reconciler's failure handling: what it logs at which level, and how long it waits before retrying."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import structlog
from structlog.testing import capture_logs

from agent.backoff import Backoff
from agent.cluster.errors import ClusterError, Forbidden, Unavailable
from agent.state import DesiredState, Registration
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
