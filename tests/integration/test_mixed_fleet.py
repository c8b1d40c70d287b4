"""An upgrade in progress: agents of the previous release (before reaper slots) beside new ones.

The previous release is this repository's own commit, checked out into a temporary worktree; the test is
skipped, saying why, when that commit is not in the clone (a shallow one).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.integration.test_fleet_safety import GRACE, LEASE, identities, own_objects, ready_slice, reaped
from tests.testbed.cluster import ROOT, Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

PREVIOUS_RELEASE = "579f98b"  # the last commit before elected reapers and watch-driven anti-entropy


@pytest.fixture
def previous_release(tmp_path: Path) -> Iterator[Path]:
    tree = tmp_path / "previous-release"
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
                           capture_output=True, check=False)
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} (the previous release) is not in this clone")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), PREVIOUS_RELEASE],
                   capture_output=True, check=True)
    yield tree
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True,
                   check=False)


def test_old_and_new_agents_reap_each_other_and_leave_the_slots_alone(
    previous_release: Path, cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    legacy = cluster.token(namespace, shared=True)  # the old VMs are not re-enrolled yet: migration
    new = [make_vm(f"new{i}") for i in range(3)]
    old = [make_vm(f"old{i}") for i in range(2)]
    for vm in new:
        vm.start_mariadb(mariadb_template)
        vm.start_agent(vm.write_config(namespace, reaper={"grace": f"{GRACE:g}s", "slot_check": "1s"}))
    for vm in old:  # the previous release's config has no slot keys
        vm.start_mariadb(mariadb_template)
        vm.start_agent(vm.write_config(namespace, legacy, reaper={"grace": f"{GRACE:g}s"}), tree=previous_release)
    for vm in new + old:
        wait_until(partial(ready_slice, cluster, namespace, vm), 30, f"{vm.name} registered")
    wait_until(lambda: len(cluster.list("lease", namespace, "vmesh.dev/reaper-slot")) == 2, 15, "slots taken")

    dying = [new[0], old[0]]
    for vm in dying:
        vm.stop_agent(signal.SIGKILL)
    for vm in dying:
        def objects_gone(vm: VM = vm) -> bool:
            return own_objects(cluster, namespace, vm) == []
        wait_until(objects_gone, 3 * (LEASE + GRACE), f"{vm.name} reaped")
    live = [vm for vm in new + old if vm not in dying]
    for vm in live:
        assert ready_slice(cluster, namespace, vm), f"{vm.name} must stay registered"
    assert set(reaped(live)) == {vm.name for vm in dying}
    # The old agents never took the slots for VMs: no slot was deleted, and every one is held.
    slots = cluster.list("lease", namespace, "vmesh.dev/reaper-slot")
    assert len(slots) == 2
    assert {s["spec"]["holderIdentity"].split("/")[0] for s in slots} <= {vm.name for vm in new if vm not in dying}
    assert len([k for k in identities(cluster, namespace) if k.startswith("Lease/")]) == len(live)
