"""Peer reaping and the garbage collector, against the real control plane."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.testbed.clock import certificates_age, skewed_clock
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

DEFAULT_TIMING = {"heartbeat": {"interval": "5s", "lease_duration": "15s"}, "reaper": {"grace": "5s"}}


def own_objects(cluster: Cluster, namespace: str, vm: VM) -> list[str]:
    slices = cluster.list("endpointslice", namespace, f"vmesh.dev/vm={vm.name}")
    lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    return [s["metadata"]["name"] for s in slices] + ([f"lease/vmesh-{vm.name}"] if lease else [])


def test_a_killed_vm_is_reaped_by_its_peer_and_skewed_clocks_never_are(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vms = {label: make_vm(label) for label in ("a", "b", "c")}
    # B's wall clock runs 30 s ahead, C's 30 s behind (Debian's faketime; their monotonic clocks are the real one).
    # Under a clock 30 s behind, certificates younger than that are not valid yet: wait until they are.
    time.sleep(max(0.0, 35 - certificates_age(cluster.ca_file)))
    clocks = {"a": (), "b": skewed_clock("+30s"), "c": skewed_clock("-30s")}
    for label, vm in vms.items():
        vm.start_mariadb(mariadb_template)
        vm.start_agent(vm.write_config(namespace, heartbeat=DEFAULT_TIMING["heartbeat"],
                                       reaper=DEFAULT_TIMING["reaper"]), wrap=clocks[label])
    for vm in vms.values():
        def registered(vm: VM = vm) -> bool:
            return len(own_objects(cluster, namespace, vm)) == 2
        wait_until(registered, 20, f"{vm.name} registered")
    # Steady state: both reaper slots held, and A renewed once after that (taking a slot restarts the holder's
    # observations, so a VM killed before its first renewal in the holder's view counts from the takeover).
    wait_until(lambda: len([o for o in cluster.list("lease", namespace, "vmesh.dev/reaper-slot")
                            if o["spec"].get("holderIdentity")]) == 2, 20, "both reaper slots held")
    renewed = cluster.get("lease", f"vmesh-{vms['a'].name}", namespace)["spec"]["renewTime"]  # type: ignore[index]
    wait_until(lambda: cluster.get("lease", f"vmesh-{vms['a'].name}", namespace)["spec"]["renewTime"]  # type: ignore[index]
               != renewed, 10, "A renewed once more")

    killed_at = time.monotonic()
    vms["a"].stop_agent(signal.SIGKILL)
    wait_until(lambda: own_objects(cluster, namespace, vms["a"]) == [], 25, "A's objects reaped", interval=0.02)
    reaped_after = time.monotonic() - killed_at
    print(f"A reaped {reaped_after:.1f}s after SIGKILL")
    # Lease 15 s + grace 5 s after A's last renewal (the kill comes 0-5 s after it), plus the reaper's 0.25 s
    # check and this test's own polling (two kubectl calls, ~0.2 s each on a loaded machine).
    assert reaped_after <= 21.0, f"A's objects took {reaped_after:.1f}s to go"

    # Keep watching for one more lease period: the skewed VMs stay, however their renewTime looks.
    deadline = time.monotonic() + 16
    while time.monotonic() < deadline:
        for label in ("b", "c"):
            assert len(own_objects(cluster, namespace, vms[label])) == 2, f"{label} must never be reaped"
        time.sleep(1)
    reapers = [line for label in ("b", "c") for line in vms[label].log_lines()
               if line.get("event") == "reaped a dead VM"]
    assert [line["dead_vm"] for line in reapers] == [vms["a"].name] * len(reapers)
    assert 1 <= len(reapers) <= 2


def test_deleting_a_lease_removes_the_vm_slices_through_the_garbage_collector(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace))
    wait_until(lambda: len(own_objects(cluster, namespace, vm)) == 2, 20, "registration")
    # Freeze the agent, so only Kubernetes' garbage collector can act (no agent runs in this namespace).
    vm.stop_agent(signal.SIGKILL)
    cluster.kubectl("delete", "lease", f"vmesh-{vm.name}", "-n", namespace)
    wait_until(lambda: own_objects(cluster, namespace, vm) == [], 20, "the slice removed by the garbage collector")


def test_reap_command_does_one_pass_by_hand(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    dead, admin = make_vm("a"), make_vm("b")
    dead.start_mariadb(mariadb_template)
    dead.start_agent(dead.write_config(namespace, reaper={"enabled": False}))
    wait_until(lambda: len(own_objects(cluster, namespace, dead)) == 2, 20, "registration")
    dead.stop_agent(signal.SIGKILL)
    admin.write_config(namespace, reaper={"grace": "1s"})
    started = time.monotonic()
    result = admin.cli("reap", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"reaped": [dead.name]}
    # One pass watches for the longest lease period (5 s here) + grace before it judges.
    assert 6 <= time.monotonic() - started < 20
    # It deleted the Lease; the slice goes with it through the garbage collector (it is not the admin VM's to
    # delete under the isolation policy).
    assert cluster.get("lease", f"vmesh-{dead.name}", namespace) is None
    wait_until(lambda: own_objects(cluster, namespace, dead) == [], 20, "the slice removed by the garbage collector")
