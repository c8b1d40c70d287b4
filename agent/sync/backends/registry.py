"""The backends, in one table: which class writes the cluster for `backend = "..."`."""

from __future__ import annotations

import structlog

from agent.cluster.kube import KubeClient
from agent.config import Settings
from agent.sync.backends.backend import Backend, LeaseGetter
from agent.sync.backends.endpoints import EndpointsBackend
from agent.sync.backends.endpointslice import EndpointSliceBackend
from agent.sync.backends.externalworkload import ExternalWorkloadBackend
from agent.sync.backends.owned import Preferred
from agent.sync.backends.workloadentry import WorkloadEntryBackend


def make_backend(settings: Settings, kube: KubeClient, vm: str, lease: LeaseGetter,
                 log: structlog.typing.FilteringBoundLogger, *, preferred: Preferred = tuple) -> Backend:
    """The backend the config names, for `vm` (this VM, or a dead peer being reaped: then `lease` is
    no_lease). `lease`: how it gets the VM's Lease, its objects' owner. `preferred`: the addresses
    in the order the agent advertises them (the mesh backends register one address per family)."""
    ns = settings.namespace
    if settings.backend == "endpoints":
        return EndpointsBackend(kube, ns, vm, lease, log, service_account=settings.endpoints.service_account,
                                reap=settings.reaper.enabled)
    if settings.backend == "workloadentry":
        return WorkloadEntryBackend(kube, ns, vm, lease, log,
                                    service_account=settings.workloadentry.service_account,
                                    network=settings.workloadentry.network, preferred=preferred)
    if settings.backend == "externalworkload":
        return ExternalWorkloadBackend(kube, ns, vm, lease, log, identity=settings.externalworkload.identity,
                                       server_name=settings.externalworkload.server_name, preferred=preferred)
    return EndpointSliceBackend(kube, ns, vm, lease, log, preferred=preferred)
