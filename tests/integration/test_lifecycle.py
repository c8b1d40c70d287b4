"""Start and stop edges against the real control plane: a blackholed apiserver (packets dropped inside the VM's
namespace, not refused), the stop deadline from the signal, a second signal, the drain before removal."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

STOP_DEADLINE = 3.0
EXIT_SLACK = 0.75  # process teardown after the deadline (interpreter exit), measured ~0.1 s


@pytest.fixture
def lease_events(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Callable[[], list[str]]]:
    """Every Lease event in the namespace while the test runs, as `kubectl get --watch` reports them."""
    out = tmp_path / "lease-events.txt"
    with out.open("w") as fh:
        watcher = subprocess.Popen([f"{cluster.env['BIN']}/kubectl", "--kubeconfig", cluster.kubeconfig, "get",
                                    "lease", "-n", namespace, "--watch", "--output-watch-events", "-o", "name"],
                                   stdout=fh, stderr=subprocess.DEVNULL)
    time.sleep(1)  # the watch is open before the agent starts (kubectl prints nothing until an event)
    try:
        yield lambda: out.read_text().split()
    finally:
        watcher.terminate()
        watcher.wait()


def blackholed_agent(vm: VM, cluster: Cluster, namespace: str, template: Path, **overrides: Any) -> None:
    vm.start_mariadb(template)
    vm.blackhole(cluster.env["GATEWAY"])
    vm.start_agent(vm.write_config(namespace,
                                   sync={"stop_deadline": f"{STOP_DEADLINE}s", **overrides}))
    vm.wait_log(lambda line: line.get("event") == "agent starting", 20, "the agent starting")
    time.sleep(2)  # the scenario: SIGTERM two seconds after start, the first sync hanging on dropped packets


def test_sigterm_while_starting_with_the_apiserver_blackholed_exits_within_the_stop_deadline(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path,
    lease_events: Callable[[], list[str]],
) -> None:
    vm = make_vm("a")
    blackholed_agent(vm, cluster, namespace, mariadb_template)
    assert vm.agent is not None
    began = time.monotonic()
    vm.agent.send_signal(signal.SIGTERM)
    code = vm.agent.wait(timeout=30)
    took = time.monotonic() - began
    print(f"exited {took:.2f}s after SIGTERM with the apiserver blackholed (stop deadline {STOP_DEADLINE}s)")
    assert code == 0
    assert took <= STOP_DEADLINE + EXIT_SLACK
    assert any(line.get("event") == "start cut short by a stop request" for line in vm.log_lines())


def test_a_second_signal_exits_at_once_and_one_stop_fits_the_deadline_from_the_signal(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """Registered, then blackholed: the clean-up hangs on dropped packets. One signal: exit within the stop
    deadline counted from it. Two: exit at once."""
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    config = vm.write_config(namespace, sync={"stop_deadline": f"{STOP_DEADLINE}s"})
    for signals in (1, 2):
        vm.start_agent(config)
        wait_until(lambda: vm.cli("status", "--json").returncode == 0, 20, "the agent serving and passing")
        wait_until(lambda: (c := slice_state(cluster, vm, namespace)) and c["ready"], 20, "a ready endpoint")
        vm.blackhole(cluster.env["GATEWAY"])
        assert vm.agent is not None
        began = time.monotonic()
        vm.agent.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.5)
            began = time.monotonic()
            vm.agent.send_signal(signal.SIGTERM)
        code = vm.agent.wait(timeout=30)
        took = time.monotonic() - began
        print(f"exited {took:.2f}s after the {'second' if signals == 2 else 'only'} signal")
        assert code == 0
        assert took <= (EXIT_SLACK if signals == 2 else STOP_DEADLINE + EXIT_SLACK)
        abandoned = [line for line in vm.log_lines() if line.get("event", "").startswith("clean-up abandoned")]
        assert abandoned[-1]["why"] == ("second signal" if signals == 2 else f"stop deadline of {STOP_DEADLINE}s")
        vm.lift_blackhole()
        vm.agent = None


def test_stopping_before_the_first_sync_creates_nothing_even_when_the_cluster_comes_back(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path,
    lease_events: Callable[[], list[str]],
) -> None:
    """Never synced: nothing of this run is in the cluster, so the stop has nothing to mark or remove, and it
    must not create the Lease, Service and slices only to delete them (the cluster returns mid-stop)."""
    vm = make_vm("a")
    blackholed_agent(vm, cluster, namespace, mariadb_template, stop_deadline="5s")
    assert vm.agent is not None
    vm.agent.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    vm.lift_blackhole()
    assert vm.agent.wait(timeout=30) == 0
    time.sleep(1)  # the watch's last events arrive
    assert lease_events() == [], "no Lease created (and deleted) by the stop"
    assert cluster.get("service", "mysqldb", namespace) is None
    written = [line["event"] for line in vm.log_lines() if str(line.get("event", "")).endswith(" created")]
    assert written == []


def slice_state(cluster: Cluster, vm: VM, namespace: str) -> dict[str, bool] | None:
    s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    return s["endpoints"][0]["conditions"] if s and s.get("endpoints") else None


def test_endpoints_stay_terminating_and_serving_for_the_drain_then_go(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    drain = 2.0
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace,
                                   sync={"drain": f"{drain}s", "stop_deadline": "6s"}))
    wait_until(lambda: (c := slice_state(cluster, vm, namespace)) and c["ready"], 20, "a ready endpoint")
    assert vm.agent is not None
    vm.agent.send_signal(signal.SIGTERM)
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conditions = slice_state(cluster, vm, namespace)
        seen.append((time.monotonic(), json.dumps(conditions, sort_keys=True)))
        if conditions is None:
            break
    draining = [t for t, c in seen if c == json.dumps({"ready": False, "serving": True, "terminating": True},
                                                       sort_keys=True)]
    assert draining, f"never seen terminating and serving: {seen}"
    held = seen[-1][0] - draining[0]
    print(f"terminating (serving) for {held:.2f}s before removal; drain {drain}s")
    assert held >= drain - 0.3
    assert seen[-1][1] == "null", "removed after the drain"
    assert vm.agent.wait(timeout=10) == 0


def test_serving_follows_health_during_the_drain(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """The database dies while the agent drains: consumers must not keep sending to a terminating endpoint
    that cannot serve any more."""
    vm = make_vm("a")
    mariadb = vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, sync={"drain": "5s", "stop_deadline": "8s"}))
    wait_until(lambda: (c := slice_state(cluster, vm, namespace)) and c["ready"], 20, "a ready endpoint")
    assert vm.agent is not None
    vm.agent.send_signal(signal.SIGTERM)
    wait_until(lambda: slice_state(cluster, vm, namespace) == {"ready": False, "serving": True, "terminating": True},
               3, "terminating and serving")
    mariadb.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: slice_state(cluster, vm, namespace) == {"ready": False, "serving": False, "terminating": True},
               3, "terminating and no longer serving")
    print(f"serving=false {time.monotonic() - killed:.2f}s after the database was killed, mid-drain")
    assert vm.agent.wait(timeout=10) == 0
    assert slice_state(cluster, vm, namespace) is None
