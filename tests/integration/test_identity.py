"""Two live agents with one vm_name (a cloned VM keeps its hostname): the newcomer refuses to register while the
other renews the Lease, and registers once it stops. Two real agents in two network-namespace VMs on one host
(same machine-id and boot id: they differ by process), against the real control plane."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

LEASE = 5.0  # the test bed's lease_duration; heartbeat.interval is 1 s


def addresses(cluster: Cluster, namespace: str, vm_name: str) -> list[str]:
    s = cluster.get("endpointslice", object_name("mysqldb", vm_name, 4), namespace)
    return sorted(a for e in (s or {}).get("endpoints") or [] for a in e["addresses"])


def status(vm: VM) -> dict[str, Any]:
    result = vm.cli("status", "--json")
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_a_clone_refuses_to_register_while_the_original_renews_and_takes_over_once_it_stops(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    original, clone = make_vm("a"), make_vm("b")
    for vm in (original, clone):
        vm.start_mariadb(mariadb_template)
    token = cluster.token(namespace, vm=original.name)  # the clone has the same disk, so the same token
    original.start_agent(original.write_config(namespace, token))
    wait_until(lambda: addresses(cluster, namespace, original.name) == [original.address], 20, "the original")
    lease = cluster.get("lease", f"vmesh-{original.name}", namespace)
    assert lease is not None
    holder = lease["spec"]["holderIdentity"]

    # A clone of the disk image: same vm_name and machine-id, booted on its own (another boot id).
    clone.start_agent(clone.write_config(namespace, token, vm_name=original.name), boot_id=str(uuid.uuid4()))
    started = time.monotonic()
    clone.wait_log(lambda line: line.get("event") == "another live agent renews this VM's lease; not registering",
                   LEASE + 3, "the conflict seen within one lease duration")
    print(f"conflict seen {time.monotonic() - started:.2f}s after the clone started")
    body = status(clone)
    assert body["health"] == "critical"
    assert any("conflict" in r and holder in r for r in body["health_reasons"]), body["health_reasons"]
    assert body["last_heartbeat"]["conflict"].startswith("conflict: lease")

    # Two lease durations later: still the original's, the clone still running and still refusing.
    end = time.monotonic() + 2 * LEASE
    while time.monotonic() < end:
        assert addresses(cluster, namespace, original.name) == [original.address]
        current = cluster.get("lease", f"vmesh-{original.name}", namespace)
        assert current is not None and current["spec"]["holderIdentity"] == holder
        time.sleep(0.5)
    assert clone.agent is not None and clone.agent.poll() is None, "no crash loop: it keeps running"
    assert status(clone)["health"] == "critical"

    original.stop_agent(signal.SIGKILL)  # stops renewing without deregistering
    killed = time.monotonic()
    wait_until(lambda: addresses(cluster, namespace, original.name) == [clone.address], LEASE + 5,
               "the clone registered once the original stopped renewing")
    took = time.monotonic() - killed
    print(f"clone registered {took:.2f}s after the original was killed (lease {LEASE}s)")
    assert took > LEASE - 1, "not before the Lease was seen unrenewed for its duration"
    after = cluster.get("lease", f"vmesh-{original.name}", namespace)
    assert after is not None
    assert after["metadata"]["uid"] == lease["metadata"]["uid"], "taken over in place"
    assert after["spec"]["holderIdentity"] not in (holder, "")
    wait_until(lambda: status(clone)["health"] == "passing", 10, "the clone passing")


def test_a_refused_clone_takes_no_reaper_slot_and_the_original_holds_its_own_by_its_identity(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """Slots carry the per-boot identity too, and an agent that does not hold its own Lease reaps nothing, so
    it must not keep a slot from the fleet: before, the clone took a slot as "itself" (the bare vm name)."""
    first, second = make_vm("a"), make_vm("b")
    token = cluster.token(namespace, vm=first.name)  # one vm_name, one identity
    overrides: dict[str, Any] = {"reaper": {"slot_check": "1s"}}
    first.start_agent(first.write_config(namespace, token, **overrides))
    wait_until(lambda: cluster.get("lease", f"vmesh-{first.name}", namespace), 20, "the original's Lease")
    second.start_agent(second.write_config(namespace, token, vm_name=first.name, **overrides),
                       boot_id=str(uuid.uuid4()))
    second.wait_log(lambda line: line.get("event") == "another live agent renews this VM's lease; not registering",
                    LEASE + 3, "the conflict")
    lease = cluster.get("lease", f"vmesh-{first.name}", namespace)
    assert lease is not None
    holder = lease["spec"]["holderIdentity"]

    def holders() -> list[str]:
        return sorted(o["spec"].get("holderIdentity") or ""
                      for o in cluster.list("lease", namespace, "vmesh.dev/reaper-slot"))

    wait_until(lambda: holder in holders(), 15, "the original holding a slot")
    time.sleep(3)  # three of the clone's looks at the slots
    assert [h for h in holders() if h] == [holder], f"only the original holds a slot: {holders()}"
