"""The fleet's write budget against the real control plane (issue 21): a fleet's heartbeat interval grows while a
reaper watches, nobody is reaped, the fleet's Lease writes (counted by a watch) fall to the budget, and a VM that
dies is reaped by the duration its Lease was last written with.

Four VMs (network namespaces, MariaDB and an agent each), one reaper slot; the test bed's heartbeat 1 s, Lease 5 s,
grace 2 s. The budget is scaled down with the fleet: 2.75 writes/s, paced to 90 % of it (2.475), of which the slot
holder's own Lease and its slot take 2 (every second); the other three VMs share 0.475: one renewal each every
6.3 s, Leases of 32 s.
"""

from __future__ import annotations

import itertools
import math
import signal
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from agent.cluster.objects import ANNOTATION_HEARTBEAT
from agent.lease.pace import AIM
from tests.integration.test_fleet_safety import GRACE, identities, own_objects, ready_slice, reaped, slot_holders
from tests.integration.test_token_rotation import status
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

BUDGET = 2.75
PACED = (4 - 1) / (AIM * BUDGET - 2)  # (VMs - the holder) / (the aim - the holder's Lease and slot, every second)
DURATION = math.ceil(PACED * 5)  # the test bed's ratio: Lease 5 s for a 1 s heartbeat
HEARTBEAT = {"interval": "1s", "lease_duration": "5s"}  # the test bed's; the ratio 5 scales with the interval
WINDOW = 18.0  # seconds of Lease writes counted, before and after (three paced renewals)


def lease_writes(cluster: Cluster, namespace: str, seconds: float) -> int:
    """Writes to the namespace's Leases (VMs' and slots) over `seconds`, as a watch delivers them."""
    watch = subprocess.Popen(
        [f"{cluster.env['BIN']}/kubectl", "--kubeconfig", cluster.kubeconfig, "get", "leases", "-n", namespace,
         "--watch-only", "-o", "jsonpath={.metadata.name}{'\\n'}"], stdout=subprocess.PIPE, text=True)
    time.sleep(seconds)  # the window is the measurement: a rate over a fixed time
    watch.terminate()
    out, _ = watch.communicate(timeout=10)
    return len(out.splitlines())


def durations(cluster: Cluster, namespace: str) -> dict[str, int]:
    return {o["metadata"]["labels"]["vmesh.dev/vm"]: o["spec"]["leaseDurationSeconds"]
            for o in cluster.list("lease", namespace, "vmesh.dev/vm")}


def test_the_interval_grows_to_the_budget_while_a_reaper_watches_and_nobody_is_reaped(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    reaper = {"slots": 1, "grace": f"{GRACE:g}s", "slot_check": "1s"}
    vms = [make_vm(f"p{i}") for i in range(4)]
    for vm in vms:  # a budget the fleet is far from: every VM at the configured 1 s
        vm.start_mariadb(mariadb_template)
        vm.start_agent(vm.write_config(namespace, heartbeat={**HEARTBEAT, "write_budget": 100}, reaper=reaper))
    for vm in vms:
        wait_until(partial(ready_slice, cluster, namespace, vm), 30, f"{vm.name} registered")
    wait_until(lambda: any(slot_holders(cluster, namespace).values()), 15, "the reaper slot held")
    holder_name = next(h for h in slot_holders(cluster, namespace).values() if h)
    holder = next(vm for vm in vms if vm.name == holder_name)
    others = [vm for vm in vms if vm is not holder]
    assert set(durations(cluster, namespace).values()) == {5}
    before = lease_writes(cluster, namespace, WINDOW)

    # The budget falls (a reload, as an admin would roll it out): the three VMs without a slot slow down, doubling
    # their interval at most per renewal (1, 2, 4, 6.3 s), each write carrying the duration of the wait after it.
    seen = identities(cluster, namespace)
    for vm in vms:
        vm.write_config(namespace, heartbeat={**HEARTBEAT, "write_budget": BUDGET}, reaper=reaper)
        assert vm.agent is not None
        vm.agent.send_signal(signal.SIGHUP)
    steps: dict[str, list[int]] = {vm.name: [] for vm in others}

    def settled() -> bool:
        now = durations(cluster, namespace)
        assert identities(cluster, namespace) == seen, "a Lease or slice was deleted while the interval grew"
        for vm in others:
            if not steps[vm.name] or steps[vm.name][-1] != now[vm.name]:
                steps[vm.name].append(now[vm.name])
        return all(now[vm.name] == DURATION for vm in others) and now[holder.name] == 5

    wait_until(settled, 40, f"the paced Leases written with {DURATION} s", interval=0.2)
    for vm in others:  # gradual: 5 s, then 10, 20, 32 (writes a second or more apart; the looks 0.2 s)
        assert len(steps[vm.name]) >= 3 and all(b <= 2 * a for a, b in itertools.pairwise(steps[vm.name]))
    after = lease_writes(cluster, namespace, WINDOW)
    print(f"fleet Lease writes: {before / WINDOW:.2f}/s at the configured 1 s, {after / WINDOW:.2f}/s under a "
          f"budget of {BUDGET:g}/s; duration steps {steps}")
    assert before >= 4 * WINDOW  # four Leases and a slot every second
    assert after <= BUDGET * WINDOW + 5  # a renewal of each VM and the slot of phase at the window's edges
    assert identities(cluster, namespace) == seen and reaped(vms) == []

    paced = status(others[0])["last_heartbeat"]
    assert (round(paced["interval_seconds"], 6), paced["lease_duration_seconds"], paced["fleet"]) == (
        round(PACED, 6), DURATION, 4)
    assert paced["pace"] == f"scaled: fleet of 4 VMs, budget {BUDGET:g} writes/s"
    assert "holds a reaper slot" in status(holder)["last_heartbeat"]["pace"]
    lease = cluster.get("lease", f"vmesh-{others[0].name}", namespace)
    assert lease is not None and lease["metadata"]["annotations"][ANNOTATION_HEARTBEAT] == f"{PACED:.3g}s"

    # A VM dying now is judged by the 32 s its Lease carries: not reaped at the configured 5 s + grace, and reaped
    # within the scaled duration + grace + 5 s.
    dead = others[0]
    killed = time.monotonic()
    dead.stop_agent(signal.SIGKILL)
    wait_until(lambda: own_objects(cluster, namespace, dead) == [], DURATION + GRACE + 5, f"{dead.name} reaped")
    gone = time.monotonic() - killed
    print(f"a paced VM killed: reaped after {gone:.1f}s (Lease {DURATION} s + grace {GRACE:g} s)")
    assert gone >= DURATION - PACED, "reaped before its scaled Lease expired"
    assert reaped(vms) == [dead.name]
    for vm in vms:
        assert vm is dead or ready_slice(cluster, namespace, vm)
