"""The seed scenario end to end: MariaDB on a VM, registered by the agent into a real kube-apiserver."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.mariadb import RATINGS_USER
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

REGISTER_TIMEOUT = 20


def running_vm(make_vm: Callable[[str], VM], label: str, template: Path, cluster: Cluster, namespace: str) -> VM:
    vm = make_vm(label)
    vm.start_mariadb(template)
    vm.start_agent(vm.write_config(namespace))
    return vm


def slice_of(cluster: Cluster, vm: VM, namespace: str) -> dict[str, Any] | None:
    return cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)


def ready_slice(cluster: Cluster, vm: VM, namespace: str) -> dict[str, Any] | None:
    s = slice_of(cluster, vm, namespace)
    if s and s.get("endpoints") and all(e["conditions"].get("ready") for e in s["endpoints"]):
        return s
    return None


def test_registers_mysql_at_the_vm_address_and_the_ratings_are_readable(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = running_vm(make_vm, "a", mariadb_template, cluster, namespace)
    assert vm.hostname_i() == [vm.address]

    s = wait_until(lambda: ready_slice(cluster, vm, namespace), REGISTER_TIMEOUT, "a ready EndpointSlice")
    assert s["addressType"] == "IPv4"
    assert [e["addresses"] for e in s["endpoints"]] == [[vm.address]]
    assert s["ports"] == [{"name": "mysql", "port": 3306, "protocol": "TCP", "appProtocol": "mysql"}]
    labels = s["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "mysqldb"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "vmesh-agent"
    assert labels["vmesh.dev/vm"] == vm.name
    lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert lease is not None
    assert s["metadata"]["ownerReferences"][0]["uid"] == lease["metadata"]["uid"]

    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert "selector" not in svc["spec"]
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("mysql", 3306)]

    # A client in the cluster's network reads the ratings at the address:port the slice advertises.
    address, port = s["endpoints"][0]["addresses"][0], s["ports"][0]["port"]
    conn = pymysql.connect(host=address, port=port, user=RATINGS_USER[0], password=RATINGS_USER[1],
                           database="test", connect_timeout=5)
    with conn.cursor() as cur:
        cur.execute("SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID")
        assert cur.fetchall() == ((1, 5), (2, 4))
    conn.close()

    # One log line per step, naming the VM, the service and the object.
    created = vm.wait_log(lambda line: line.get("event") == "endpointslice created", 5, "slice creation logged")
    assert created["vm"] == vm.name
    assert created["service"] == "mysqldb"
    assert created["object"] == f"endpointslice/{object_name('mysqldb', vm.name, 4)}"


def test_lease_renew_time_advances(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = running_vm(make_vm, "a", mariadb_template, cluster, namespace)

    def renew_time() -> str | None:
        lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
        return lease["spec"]["renewTime"] if lease else None

    first = wait_until(renew_time, REGISTER_TIMEOUT, "the Lease")
    later = wait_until(lambda: (t := renew_time()) != first and t, 10, "a renewal")
    assert later > first
    lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert lease is not None
    assert lease["spec"]["holderIdentity"].split("/")[0] == vm.name  # VM/machine/boot/process
    assert lease["spec"]["leaseDurationSeconds"] == 5


def test_sigterm_removes_slice_and_lease_and_keeps_the_service(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = running_vm(make_vm, "a", mariadb_template, cluster, namespace)
    wait_until(lambda: ready_slice(cluster, vm, namespace), REGISTER_TIMEOUT, "a ready EndpointSlice")

    assert vm.stop_agent(signal.SIGTERM) == 0
    assert slice_of(cluster, vm, namespace) is None
    assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is None
    assert cluster.get("service", "mysqldb", namespace) is not None


def test_two_vms_register_two_slices_and_stopping_one_leaves_the_other(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm_a = running_vm(make_vm, "a", mariadb_template, cluster, namespace)
    vm_b = running_vm(make_vm, "b", mariadb_template, cluster, namespace)

    def addresses() -> list[str]:
        slices = cluster.list("endpointslice", namespace, "kubernetes.io/service-name=mysqldb")
        return sorted(a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"])

    wait_until(lambda: addresses() == sorted([vm_a.address, vm_b.address]), REGISTER_TIMEOUT, "both addresses")
    assert len(cluster.list("endpointslice", namespace, "kubernetes.io/service-name=mysqldb")) == 2

    assert vm_a.stop_agent() == 0
    assert addresses() == [vm_b.address]
    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert [p["port"] for p in svc["spec"]["ports"]] == [3306]


def test_missing_role_is_one_clear_line_then_works_once_granted(
    cluster: Cluster, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    namespace = cluster.create_namespace()
    try:
        cluster.apply_rbac(namespace)
        vm = make_vm("a")
        vm.start_mariadb(mariadb_template)
        # the VM's ServiceAccount exists, its Role is not bound to it
        agent = vm.start_agent(vm.write_config(namespace, cluster.token(namespace, vm=vm.name, bind=False)))

        line = vm.wait_log(lambda entry: entry.get("event") == "sync failed", REGISTER_TIMEOUT, "the RBAC error")
        assert "cannot create leases.coordination.k8s.io in namespace " + namespace in line["error"]
        assert "grant it with the Role in rbac.yaml" in line["error"]
        assert agent.poll() is None, "the agent must keep running and retrying, not crash-loop"

        cluster.bind_vm(namespace, vm.name)
        wait_until(lambda: ready_slice(cluster, vm, namespace), 30, "registration once the Role is bound")
        assert agent.poll() is None
        failures = [e for e in vm.log_lines() if e.get("event") == "sync failed"]
        assert len(failures) == 1, f"the same failure must be logged once, got {len(failures)}"
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
