"""A stop is not a deregistration: the kinds of stop against the real kube-apiserver, for every backend.

The agent runs as under systemd (NOTIFY_SOCKET on a test socket, `run --stop-kind-file`); the test writes the
kind as the unit's ExecStop would (`vmesh-agent stop-kind --write`), then sends SIGTERM. An API watch of the
backend's objects records every version while the agent stops and the next one starts: a restart must publish
nothing not ready or terminating and keep the objects' and the Lease's uids; a stop for good drains (terminating
first) and removes, as before.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_settings
from agent.daemon.agent import Agent
from agent.daemon.sdnotify import Notifier
from agent.stop_kind import StopKind, write_kind
from tests.testbed.cluster import Cluster
from tests.testbed.crds import install_istio_crds, install_linkerd_crds
from tests.testbed.history import Event, History
from tests.testbed.notify import FakeSystemd
from tests.testbed.unit import AgentUnit
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

Body = dict[str, Any]

pytestmark = pytest.mark.vm  # cluster: added by tests/conftest.py wherever the fixture is used


def _condition(obj: Body, kind: str) -> Body:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


@dataclass(frozen=True)
class View:
    """How one backend publishes the VM: which resource, and the VM's readiness in one of its objects."""

    backend: str
    resource: str  # for kubectl

    def ours(self, obj: Body, vm: VM) -> bool:
        if self.backend == "endpoints":
            return bool(obj["metadata"]["name"] == "mysqldb" and self._entry(obj, vm) is not None)
        return (obj["metadata"].get("labels") or {}).get("vmesh.dev/vm") == vm.name

    def _entry(self, obj: Body, vm: VM) -> str | None:
        for subset in obj.get("subsets") or []:
            for field in ("addresses", "notReadyAddresses"):
                if any(e["ip"] == vm.address for e in subset.get(field) or []):
                    return field
        return None

    def ready(self, obj: Body, vm: VM) -> bool:
        """Published ready, and not terminating."""
        if self.backend == "endpointslice":
            conditions = [e["conditions"] for e in obj.get("endpoints") or []]
            return bool(conditions) and all(c.get("ready") and not c.get("terminating") for c in conditions)
        if self.backend == "endpoints":
            return self._entry(obj, vm) == "addresses"
        condition = "Healthy" if self.backend == "workloadentry" else "Ready"
        return _condition(obj, condition).get("status") == "True"

    def terminating(self, obj: Body, vm: VM) -> bool:
        if self.backend == "endpointslice":
            return any(e["conditions"].get("terminating") for e in obj.get("endpoints") or [])
        if self.backend == "endpoints":
            return self._entry(obj, vm) == "notReadyAddresses"
        condition = "Healthy" if self.backend == "workloadentry" else "Ready"
        return _condition(obj, condition).get("reason") == "Terminating"


VIEWS = {
    "endpointslice": View("endpointslice", "endpointslices"),
    "endpoints": View("endpoints", "endpoints"),
    "workloadentry": View("workloadentry", "workloadentries.networking.istio.io"),
    "externalworkload": View("externalworkload", "externalworkloads.workload.linkerd.io"),
}


@pytest.fixture(params=list(VIEWS))
def view(request: pytest.FixtureRequest, cluster: Cluster) -> View:
    backend = request.param
    if backend == "workloadentry":
        install_istio_crds(cluster)
    if backend == "externalworkload" and not install_linkerd_crds(cluster):
        pytest.skip("Linkerd's ExternalWorkload CRD is not in ../shared/crds")
    return VIEWS[backend]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


@pytest.fixture
def units() -> Iterator[Callable[[VM, Path, bool], AgentUnit]]:
    made: list[AgentUnit] = []

    def make(vm: VM, config: Path, under_systemd: bool = True) -> AgentUnit:
        made.append(AgentUnit(vm, config, under_systemd=under_systemd))
        return made[-1]

    yield make
    for unit in made:
        unit.close()


def setup(vm: VM, namespace: str, cluster: Cluster, template: Path, backend: str, **sync: str) -> Path:
    vm.start_mariadb(template)
    # The legacy Endpoints are shared by every VM: the shared account writes them (see docs/decisions.md).
    token = cluster.token(namespace, shared=True) if backend == "endpoints" else ""
    return vm.write_config(namespace, token=token, backend=backend if backend != "endpointslice" else "",
                           sync={"resync_interval": "2s", **sync})


def published(cluster: Cluster, view: View, vm: VM, namespace: str) -> list[Body]:
    return [o for o in cluster.list(view.resource, namespace) if view.ours(o, vm)]


def lease(cluster: Cluster, vm: VM, namespace: str) -> Body | None:
    return cluster.get("lease", f"vmesh-{vm.name}", namespace)


def wait_ready(cluster: Cluster, view: View, vm: VM, namespace: str) -> list[Body]:
    def ready() -> list[Body]:
        objs = published(cluster, view, vm, namespace)
        return objs if objs and all(view.ready(o, vm) for o in objs) else []

    found: list[Body] = wait_until(ready, 30, f"{vm.name} published ready ({view.backend})")
    return found


def holder_pid(cluster: Cluster, vm: VM, namespace: str) -> int:
    current = lease(cluster, vm, namespace)
    holder = str(((current or {}).get("spec") or {}).get("holderIdentity") or "")
    return int(holder.rsplit("/", 1)[1]) if holder.count("/") == 3 else 0


def test_a_restart_keeps_every_object_ready_and_the_next_process_adopts_them(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, *, view: View,
    units: Callable[[VM, Path], AgentUnit],
) -> None:
    vm = make_vm("a")
    unit = units(vm, setup(vm, namespace, cluster, mariadb_template, view.backend))
    unit.start()
    before = {o["metadata"]["uid"] for o in wait_ready(cluster, view, vm, namespace)}
    lease_before = lease(cluster, vm, namespace)
    assert lease_before is not None
    with History(cluster, view.resource, namespace) as history:
        history.wait_for(lambda o: view.ours(o, vm), 10, "the watch's first list")
        unit.stop(StopKind.RESTART)
        assert {o["metadata"]["uid"] for o in published(cluster, view, vm, namespace)} == before, \
            "the objects did not outlive the stop"
        kept = lease(cluster, vm, namespace)
        assert kept is not None and kept["metadata"]["uid"] == lease_before["metadata"]["uid"], "the Lease is gone"
        stopping = [m for m in unit.messages() if m.startswith("STATUS=")]
        assert stopping[-1] == "STATUS=restarting: registrations kept"

        second = unit.start()
        wait_until(lambda: holder_pid(cluster, vm, namespace) == second, 20, "the new process renewing the Lease")
        vm.wait_log(lambda line: line.get("event") == "lease adopted from a previous run", 5, "the adoption")
        vm.wait_log(lambda line: str(line.get("event", "")).startswith("resuming an earlier run's registrations"),
                    5, "the resuming first sync")
        # Three renewals by the new process (every 1 s here, from after its first sync): its first sync and a
        # full resync (every 2 s here) are on the record too.
        renewals: set[str] = set()

        def renewed_thrice() -> bool:
            current = lease(cluster, vm, namespace)
            if current and holder_pid(cluster, vm, namespace) == second:
                renewals.add(current["spec"]["renewTime"])
            return len(renewals) >= 3

        wait_until(renewed_thrice, 15, "three renewals by the new process")
        after = published(cluster, view, vm, namespace)
        events: list[Event] = history.events(lambda o: view.ours(o, vm))

    print(f"{view.backend}: {len(events)} versions of the VM's objects seen across the restart")
    assert events, history
    assert not [e for e in events if e.type == "DELETED"], f"an object was deleted: {history}"
    unready = [(e.type, e.obj) for e in events if not view.ready(e.obj, vm) or view.terminating(e.obj, vm)]
    assert not unready, f"published not ready or terminating across the restart: {unready}"
    assert {e.uid for e in events} == before and {o["metadata"]["uid"] for o in after} == before
    adopted = lease(cluster, vm, namespace)
    assert adopted is not None and adopted["metadata"]["uid"] == lease_before["metadata"]["uid"]


def test_a_stop_for_good_drains_then_removes(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, *, view: View,
    units: Callable[[VM, Path], AgentUnit],
) -> None:
    """The agent removes its objects itself right after its Lease, without waiting for the garbage collector,
    which is stalled here as it is while it resyncs (for up to its 30 s sync period after a CRD is installed:
    how CI once saw an ExternalWorkload outlive its VM by more than 30 s) or while kube-controller-manager
    starts or changes leader."""
    vm = make_vm("a")
    unit = units(vm, setup(vm, namespace, cluster, mariadb_template, view.backend, drain="2s"))
    unit.start()
    wait_ready(cluster, view, vm, namespace)
    with History(cluster, view.resource, namespace) as history, cluster.paused("kube-controller-manager"):
        history.wait_for(lambda o: view.ours(o, vm), 10, "the watch's first list")
        write_kind(str(unit.kind_file), StopKind.STOP)
        assert vm.agent is not None
        vm.agent.send_signal(signal.SIGTERM)
        # `vmesh-agent status` while it drains (the local API serves until the end of the stop).
        wait_until(lambda: "stopping   deregistering" in vm.cli("status").stdout, 2, "status: deregistering")
        assert vm.agent.wait(timeout=15) == 0
        vm.agent = None
        assert not published(cluster, view, vm, namespace), "the VM's objects outlived its stop for good"
    assert "deregistered" in [line.get("event") for line in vm.log_lines()]
    assert any(view.terminating(e.obj, vm) for e in history.events(lambda o: view.ours(o, vm))), \
        f"never published terminating before the removal: {history}"
    assert lease(cluster, vm, namespace) is None
    assert "STATUS=deregistering" in unit.messages()


@pytest.mark.parametrize("backend", ["endpointslice", "endpoints"])
def test_a_stop_for_good_held_up_by_a_stalled_apiserver_still_deregisters(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, *, backend: str,
    units: Callable[[VM, Path, bool], AgentUnit],
) -> None:
    """A whole site stopping at once leaves the apiserver slow to answer (issue 21: 750 agents stopping together
    left 520 Leases at the 10 s deadline). Here it answers nothing for 8 s of the 10: the marking must give way,
    4 s before the deadline, to the removal (the Lease DELETE first). Before, the marking was answered at 8 s
    and the drain (4 s here, so that a slow marking shows) ran to the deadline: the clean-up was abandoned and
    the Lease stayed."""
    view = VIEWS[backend]
    vm = make_vm("a")
    unit = units(vm, setup(vm, namespace, cluster, mariadb_template, backend, drain="4s"), False)
    unit.start()
    wait_ready(cluster, view, vm, namespace)
    assert vm.agent is not None
    with cluster.paused("kube-apiserver"):
        vm.agent.send_signal(signal.SIGTERM)  # outside systemd: a stop for good
        vm.wait_log(lambda line: line.get("event") == "stopping", 5, "the stop begun")
        time.sleep(8.0)  # the stall's length is the scenario, not a wait for an event
    assert vm.agent.wait(timeout=15) == 0
    vm.agent = None
    events = [str(line.get("event")) for line in vm.log_lines()]
    assert "endpoints not all marked terminating in time; removing them now" in events
    assert not [e for e in events if e.startswith("clean-up abandoned")], events
    assert lease(cluster, vm, namespace) is None, "the Lease outlived a stop for good"
    if backend == "endpoints":
        assert not published(cluster, view, vm, namespace), "the entry outlived a stop for good"
    else:  # by the agent after its Lease if time is left, else by the garbage collector
        assert [e for e in events if e.startswith("deregistered")], events
        wait_until(lambda: not published(cluster, view, vm, namespace), 30, "the VM's objects removed")


@pytest.mark.parametrize(("under_systemd", "switch", "kind", "keeps"), [
    (False, "auto", StopKind.RESTART, False),  # outside systemd: as before, whatever a file says
    (True, "auto", None, False),  # no ExecStop ran (an older unit, a SIGTERM by hand): a stop for good
    (True, "auto", StopKind.SHUTDOWN, False),
    (True, "always", StopKind.RESTART, False),
    (False, "never", None, True),
])
def test_what_decides_between_keeping_and_deregistering(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, *,
    units: Callable[[VM, Path, bool], AgentUnit], under_systemd: bool, switch: str, kind: StopKind | None,
    keeps: bool,
) -> None:
    view = VIEWS["endpointslice"]
    vm = make_vm("a")
    config = setup(vm, namespace, cluster, mariadb_template, view.backend, deregister_on_stop=switch)
    unit = units(vm, config, under_systemd)
    unit.start()
    before = {o["metadata"]["uid"] for o in wait_ready(cluster, view, vm, namespace)}
    unit.stop(kind)
    if keeps:
        assert {o["metadata"]["uid"] for o in published(cluster, view, vm, namespace)} == before
        assert lease(cluster, vm, namespace) is not None
    else:
        assert lease(cluster, vm, namespace) is None
        assert published(cluster, view, vm, namespace) == []


async def test_the_agents_own_failure_exit_under_systemd_keeps_the_registrations(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, systemd: FakeSystemd,
) -> None:
    """The internal-failure path (a root task ends unexpectedly → exit 1 → Restart=on-failure): the agent runs in
    this process, on the VM's config, and one of its own guarded root tasks fails."""
    view = VIEWS["endpointslice"]
    vm = make_vm("a")
    config = setup(vm, namespace, cluster, mariadb_template, view.backend)
    # The in-process agent runs in the host's namespace: it advertises the bridge's gateway address, where it
    # checks a listener of the test's (a TCP check, as a declared service's).
    gateway = cluster.env["GATEWAY"]
    server = await asyncio.start_server(lambda r, w: w.close(), gateway, 0)
    port = server.sockets[0].getsockname()[1]
    config.write_text(config.read_text().replace("[discovery]\n", "[discovery]\nenabled = false\n") +
                      f'\n[address]\naddress = "{gateway}"\n\n[[service]]\nname = "mysqldb"\nport = {port}\n'
                      f'protocol = "tcp"\n')
    agent = Agent(load_settings(config), config_path=str(config),
                  notifier=Notifier({"NOTIFY_SOCKET": str(systemd.path)}))
    running = asyncio.create_task(agent.run())
    try:
        objs = await asyncio.to_thread(
            wait_until, lambda: [o for o in published(cluster, view, vm, namespace) if view.ready(o, vm)], 30,
            "published ready")
        before = {o["metadata"]["uid"] for o in objs}

        async def broken() -> None:
            raise RuntimeError("a root loop broke")

        agent.tasks.spawn("broken", broken())
        assert await asyncio.wait_for(running, 15) == 1
    finally:
        server.close()
        await server.wait_closed()
        if not running.done():
            agent.request_stop()
            await running
    assert "STATUS=restarting: registrations kept" in systemd.drain()
    objs = published(cluster, view, vm, namespace)
    assert {o["metadata"]["uid"] for o in objs} == before and all(view.ready(o, vm) for o in objs)
    assert lease(cluster, vm, namespace) is not None
