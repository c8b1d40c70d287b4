"""A service whose port changes (issue 20, item 7): MariaDB moves from 3306 to 3307 on its VM, and a pod's client
on the node (kube-proxy in nftables mode, CoreDNS) keeps using `mysqldb:3306`.

kube-proxy matches a selector-less Service's ports to the EndpointSlice's by name, and takes the port number
from the slice. So what clients of 3306 get depends on the name the agent gives its slice's 3307: the Service
port's that targets 3307 (the admin's remap, `port 3306, targetPort 3307`), or a port of its own that it adds to
the Service (`mysql-3307`) when no Service port stands for 3307. The agent only ever adds Service ports: the old
one stays in the Service, and serves no one once no VM listens there.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.history import History
from tests.testbed.node import Node
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

TIMEOUT = 30
RATINGS = "SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID"
ROWS = "1\t5\n2\t4"
# How long the agent keeps the vanished 3306 (not ready) before removing it; the default is a minute.
REMOVE_AFTER = "3s"
# The admin's remap, as docs/decisions.md gives it: the Service's first port, `mysql` 3306, now targets 3307.
REMAP = '[{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 3307}]'

Body = dict[str, Any]


@pytest.fixture
def node(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Node]:
    with Node(tmp_path, cluster, search_namespace=namespace) as n:
        yield n


def service_ports(svc: Body | None) -> list[tuple[str, int, object]]:
    return [(p["name"], p["port"], p.get("targetPort")) for p in (svc or {}).get("spec", {}).get("ports") or []]


def ports_of(slice_: Body) -> list[tuple[str, int, bool]] | None:
    """(port name, port, endpoint ready) per port of a VM's slice; None unless it has exactly one endpoint."""
    endpoints = slice_.get("endpoints") or []
    if len(endpoints) != 1:
        return None
    ready = bool(endpoints[0]["conditions"].get("ready"))
    return sorted((p["name"], p["port"], ready) for p in slice_.get("ports") or [])


def slice_ports(cluster: Cluster, namespace: str) -> list[tuple[str, int, bool]] | None:
    """ports_of the VM's slice of mysqldb; None unless there is exactly one."""
    slices = cluster.list("endpointslice", namespace, "kubernetes.io/service-name=mysqldb")
    return ports_of(slices[0]) if len(slices) == 1 else None


def wait_for_slice(cluster: Cluster, namespace: str, expected: list[tuple[str, int, bool]], what: str) -> None:
    """Until the VM's slice has `expected`; a timeout tells what the slice and the Service had last."""
    try:
        wait_until(lambda: slice_ports(cluster, namespace) == expected, TIMEOUT, what, interval=0.2)
    except AssertionError:
        svc = cluster.get("service", "mysqldb", namespace)
        raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}: slice {slice_ports(cluster, namespace)},"
                             f" Service {service_ports(svc)}") from None


def read(node: Node, host: str, port: int) -> str:
    try:
        return node.mysql(host, RATINGS, port=port, timeout=2)
    except AssertionError:
        return ""


def registered_on_3306(cluster: Cluster, namespace: str, vm: VM, node: Node, mariadb_template: Path) -> str:
    """MariaDB on 3306 registered by the agent and read through ClusterIP:3306 from the node: the ClusterIP."""
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, discovery={"remove_after": REMOVE_AFTER}))
    svc = wait_until(lambda: cluster.get("service", "mysqldb", namespace), TIMEOUT, "the Service")
    assert svc is not None and service_ports(svc) == [("mysql", 3306, 3306)]
    cluster_ip: str = svc["spec"]["clusterIP"]
    assert wait_until(lambda: read(node, cluster_ip, 3306), TIMEOUT, "the ratings through ClusterIP:3306") == ROWS
    return cluster_ip


def after_a_sync(vm: VM) -> None:
    """Returns once the agent has run a whole sync that started after this call (the second one to end after it):
    every sync reads the Service and adds the ports it finds missing."""

    def ended_after(mark: datetime.datetime) -> datetime.datetime | None:
        result = vm.cli("status", "--json")
        at = json.loads(result.stdout)["last_sync"]["at"] if result.returncode == 0 else None
        moment = datetime.datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None
        return moment if moment and moment > mark else None

    called = datetime.datetime.now(datetime.UTC)
    first = wait_until(lambda: ended_after(called), TIMEOUT, "a sync", interval=0.2)
    assert first is not None
    wait_until(lambda: ended_after(first), TIMEOUT, "a sync after it", interval=0.2)


def test_an_admins_remap_keeps_clients_of_the_old_port_served(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, node: Node
) -> None:
    """The documented move: the admin stops MariaDB, remaps the Service's port 3306 to targetPort 3307 and starts
    MariaDB on 3307. The agent follows the remap: its slice carries 3307 under the Service port's name `mysql`,
    it adds no port 3307, and clients of ClusterIP:3306 read the same data again. Before, it matched the
    Service's ports by number only: it added `mysql-3307`, named its slice's port after it, and clients of 3306
    were refused for good."""
    vm = make_vm("db")
    cluster_ip = registered_on_3306(cluster, namespace, vm, node, mariadb_template)

    # The admin stops MariaDB, remaps the Service, and starts MariaDB on 3307 (same datadir, same data).
    assert vm.mariadb is not None
    vm.mariadb.stop()
    cluster.kubectl("patch", "service", "mysqldb", "-n", namespace, "--type", "json", "-p", REMAP)
    remapped = cluster.get("service", "mysqldb", namespace)
    assert remapped is not None and service_ports(remapped) == [("mysql", 3306, 3307)]
    vm.start_mariadb(mariadb_template, port=3307)

    # The vanished 3306 goes after discovery.remove_after; then the slice is 3307 alone, under the remapped name.
    wait_for_slice(cluster, namespace, [("mysql", 3307, True)], "the slice's 3307 named as the remapped port")
    assert wait_until(lambda: read(node, cluster_ip, 3306), TIMEOUT, "the ratings through ClusterIP:3306 again") \
        == ROWS

    # The agent keeps the admin's remap: the Service is as the admin left it after the agent's syncs.
    after_a_sync(vm)
    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert service_ports(svc) == [("mysql", 3306, 3307)], "the agent added a port or changed the remap"
    assert svc["metadata"]["resourceVersion"] == remapped["metadata"]["resourceVersion"]
    assert slice_ports(cluster, namespace) == [("mysql", 3307, True)]
    assert read(node, cluster_ip, 3306) == ROWS
    # While the vanished 3306 was kept (not ready) beside the new 3307, the slice named only 3307 `mysql`: a
    # slice naming two ports alike is refused by the apiserver (422), and the agent's writes failed until 3306 went.
    refused = [line for line in vm.log_lines() if line.get("event") == "sync failed"]
    assert not refused, refused


def test_without_a_remap_the_old_port_stays_and_serves_no_one(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, node: Node
) -> None:
    """What happens to the old port (the issue asks to document it). MariaDB moves to 3307 and nobody touches
    the Service: the agent adds a port 3307, `mysql-3307` (the name `mysql` is taken), and keeps `mysql` 3306,
    which serves no one once no VM listens there (kube-proxy refuses its clients); clients of 3307 read the data.
    An admin who remaps afterwards gets 3306 back: the remap wins the slice's name for 3307, the added port
    `mysql-3307` is left without endpoints, and the admin may delete it: the agent does not add it again."""
    vm = make_vm("db")
    cluster_ip = registered_on_3306(cluster, namespace, vm, node, mariadb_template)

    # The VM's admin moves MariaDB to 3307 (same datadir, same data) and leaves the Service alone.
    assert vm.mariadb is not None
    with History(cluster, "endpointslices", namespace) as history:
        vm.mariadb.stop()
        vm.start_mariadb(mariadb_template, port=3307)
        moved = [("mysql-3307", 3307, True)]
        wait_for_slice(cluster, namespace, moved, "the slice with the new port alone")
        history.wait_for(lambda obj: ports_of(obj) == moved, TIMEOUT, "the watch to see it")
    # The old port stays in the slice, not ready, for discovery.remove_after, and the VM's endpoint with it (one
    # endpoint per address, ready only when all its ports are); then it goes.
    states = [ports_of(e.obj) for e in history.events()]
    states = states[:states.index(moved)]
    assert states[0] == [("mysql", 3306, True)], states
    assert [("mysql", 3306, False), ("mysql-3307", 3307, False)] in states, states
    assert all(state is not None and state[0] == ("mysql", 3306, False) for state in states[1:]), states
    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert service_ports(svc) == [("mysql", 3306, 3306), ("mysql-3307", 3307, 3307)]
    assert svc["spec"]["ports"][1]["appProtocol"] == "mysql"
    assert wait_until(lambda: read(node, cluster_ip, 3307), TIMEOUT, "the ratings through ClusterIP:3307") == ROWS
    outcome, took = node.connect(cluster_ip, 3306)
    assert (outcome, took < 0.5) == ("refused", True), (outcome, took)

    # The admin remaps afterwards.
    cluster.kubectl("patch", "service", "mysqldb", "-n", namespace, "--type", "json", "-p", REMAP)
    wait_for_slice(cluster, namespace, [("mysql", 3307, True)], "the slice's 3307 named as the remapped port")
    assert wait_until(lambda: read(node, cluster_ip, 3306), TIMEOUT, "the ratings through ClusterIP:3306 again") \
        == ROWS
    wait_until(lambda: node.connect(cluster_ip, 3307)[0] == "refused", TIMEOUT, "mysql-3307 without endpoints")

    # The admin deletes the port the agent added; the agent does not add it again.
    cluster.kubectl("patch", "service", "mysqldb", "-n", namespace, "--type", "json", "-p",
                    '[{"op": "test", "path": "/spec/ports/1/name", "value": "mysql-3307"},'
                    ' {"op": "remove", "path": "/spec/ports/1"}]')
    cleaned = cluster.get("service", "mysqldb", namespace)
    assert cleaned is not None and service_ports(cleaned) == [("mysql", 3306, 3307)]
    after_a_sync(vm)
    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert service_ports(svc) == [("mysql", 3306, 3307)], "the agent added its port again"
    assert svc["metadata"]["resourceVersion"] == cleaned["metadata"]["resourceVersion"]
    assert read(node, cluster_ip, 3306) == ROWS
