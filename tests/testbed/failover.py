"""Two VMs serving `mysqldb` behind one Service, and a pod's client on a node connecting through its name:
the scenarios shared by tests/integration/test_failover.py and bench/failover."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.stop_kind import StopKind
from tests.testbed.client import Attempt, Client, failover_time
from tests.testbed.cluster import Cluster
from tests.testbed.unit import AgentUnit
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

SERVED_TIMEOUT = 30
RUN = 20  # consecutive connections answered by the survivor that count as "failed over"


def datadir(vm: VM) -> str:
    assert vm.mariadb is not None
    return str(vm.mariadb.datadir)


def start_vm(vm: VM, template: Path, cluster: Cluster, namespace: str) -> VM:
    vm.start_mariadb(template)
    vm.start_agent(vm.write_config(namespace))
    return vm


def start_vm_as_unit(vm: VM, template: Path, namespace: str) -> AgentUnit:
    """MariaDB and the agent at its defaults, run as the shipped unit runs it (under systemd, told the kind of
    each stop)."""
    vm.start_mariadb(template)
    unit = AgentUnit(vm, vm.write_config(namespace))
    unit.start()
    return unit


def wait_served_by(client: Client, vms: list[VM], timeout: float = SERVED_TIMEOUT) -> None:
    """Until every VM in `vms` has answered a connection made from now on."""
    since = time.monotonic()
    wanted = {datadir(vm) for vm in vms}

    def all_answered() -> bool:
        seen = {a.server.rstrip("/") for a in client.since(since) if a.ok}
        return wanted <= seen

    wait_until(all_answered, timeout, f"connections answered by {sorted(vm.name for vm in vms)}")


def slice_ready(cluster: Cluster, namespace: str, vm: VM) -> bool | None:
    """The ready condition of the VM's endpoint in the API (None when it has no slice)."""
    found = cluster.list("endpointslice", namespace, f"vmesh.dev/vm={vm.name}")
    endpoints = [e for s in found for e in s.get("endpoints") or []]
    return bool(endpoints[0]["conditions"].get("ready")) if endpoints else None


@dataclass
class KillRun:
    failover_s: float  # kill → first of RUN consecutive connections answered by the survivor
    api_not_ready_s: float  # kill → the killed VM's endpoint not ready in the API
    failed: int  # connections that failed in between
    longest_attempt_s: float  # no connection may hang


def kill_database(client: Client, cluster: Cluster, namespace: str, *, victim: VM, survivor: VM,
                  timeout: float = SERVED_TIMEOUT) -> KillRun:
    """SIGKILL the victim's MariaDB while the client keeps connecting; measure until it has failed over."""
    assert victim.mariadb is not None
    killed_at = time.monotonic()
    victim.mariadb.stop(signal.SIGKILL)
    wait_until(lambda: slice_ready(cluster, namespace, victim) is False, timeout, f"{victim.name} not ready")
    api_s = time.monotonic() - killed_at

    def failed_over() -> float | None:
        return failover_time(client.since(killed_at), killed_at, datadir(survivor), RUN)

    took = wait_until(failed_over, timeout, f"failover to {survivor.name}")
    attempts = [a for a in client.since(killed_at) if a.at <= killed_at + took]
    return KillRun(took, api_s, sum(not a.ok for a in attempts), max((a.took for a in attempts), default=0.0))


def make_kube_proxy_sync(cluster: Cluster, namespace: str) -> Callable[[], object]:
    """A change kube-proxy acts on at once (a new Service), so that its next sync waits out the minimum
    sync period: the worst moment for the terminating mark of a planned stop to arrive."""
    def poke() -> None:
        cluster.kubectl("create", "service", "clusterip", f"poke-{uuid.uuid4().hex[:6]}", "--tcp=80", "-n", namespace)
    return poke


@dataclass
class PlannedStop:
    failed: list[Attempt]  # must be empty
    attempts: int
    after_stop: int  # connections made after the database stopped (all answered by the other VM)


def planned_stop(client: Client, leaving: VM, staying: VM, watch: float = 2.0,
                 just_before: Callable[[], object] = lambda: None) -> PlannedStop:
    """The order systemd uses at shutdown: the agent gets SIGTERM, and the database stops right after it exits.
    `just_before` runs right before the SIGTERM (e.g. a change elsewhere that makes kube-proxy sync just then,
    so that its next sync waits out its minimum sync period, 1 s)."""
    assert leaving.mariadb is not None
    just_before()
    began = time.monotonic()
    leaving.stop_agent(signal.SIGTERM)
    leaving.mariadb.stop()
    stopped = time.monotonic()
    client.wait_for(1, stopped + watch)
    attempts = client.since(began)
    after = [a for a in attempts if a.at >= stopped and a.at < stopped + watch]
    wrong = [a for a in attempts if not a.ok] + [a for a in after if a.ok and not a.answered_by(datadir(staying))]
    return PlannedStop(wrong, len(attempts), len(after))


@dataclass
class Restarts:
    count: int
    failed: list[Attempt]
    attempts: int
    longest_gap_s: float  # between the starts of two answered connections in a row


def longest_gap(attempts: list[Attempt]) -> float:
    answered = [a.at for a in attempts if a.ok]
    return max((b - a for a, b in itertools.pairwise(answered)), default=0.0)


def restarts(client: Client, unit: AgentUnit, count: int, kind: StopKind = StopKind.RESTART,
             watch: float = 1.0) -> Restarts:
    """`systemctl restart` of the agent `count` times in a row, MariaDB untouched (each restart waits for the new
    process's READY=1, as systemctl does); `kind` is what the unit's ExecStop tells the agent (STOP: what every
    release before issue 17 did on any SIGTERM). Connections from the first SIGTERM to `watch` s after the last
    READY=1."""
    began = time.monotonic()
    for _ in range(count):
        unit.restart(kind)
    client.wait_for(1, time.monotonic() + watch)
    attempts = client.since(began)
    return Restarts(count, [a for a in attempts if not a.ok], len(attempts), longest_gap(attempts))
