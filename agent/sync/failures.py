"""Services of one VM are synced independently: one that fails (a name the apiserver rejects, an RBAC gap for
its object) must not keep the others out of the cluster. The failures of one sync, one per service."""

from __future__ import annotations

from collections.abc import Mapping

from agent.cluster.errors import ClusterError


class ServiceFailures(ClusterError):
    """Some services of the VM could not be synced; every other one was. `errors`: service -> its error."""

    def __init__(self, errors: Mapping[str, ClusterError]) -> None:
        super().__init__("; ".join(f"service {name}: {exc}" for name, exc in sorted(errors.items())))
        self.errors = dict(errors)
        self.transient = all(exc.transient for exc in errors.values())


def raise_failures(errors: Mapping[str, ClusterError]) -> None:
    if errors:
        raise ServiceFailures(errors)
