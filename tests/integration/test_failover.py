"""Failover as a pod's client sees it: two VMs serve `mysqldb`, the client connects through the Service name
(CoreDNS, kube-proxy) over and over, and one VM's database dies or the VM is stopped as planned."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed.client import Client
from tests.testbed.cluster import Cluster
from tests.testbed.failover import kill_database, make_kube_proxy_sync, planned_stop, start_vm, wait_served_by
from tests.testbed.node import Node
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until


@pytest.fixture
def pair(cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path,
         tmp_path: Path) -> Iterator[tuple[Node, Client, VM, VM]]:
    a = start_vm(make_vm("a"), mariadb_template, cluster, namespace)
    b = start_vm(make_vm("b"), mariadb_template, cluster, namespace)
    with Node(tmp_path, cluster, search_namespace=namespace) as node:
        wait_until(lambda: node.resolve(f"mysqldb.{namespace}.svc.cluster.local"), 30, "the Service name")
        with Client(node.netns, f"mysqldb.{namespace}.svc.cluster.local") as client:
            wait_served_by(client, [a, b])
            yield node, client, a, b


def test_a_killed_database_fails_over_to_the_other_vm_and_no_connection_hangs(
    cluster: Cluster, namespace: str, pair: tuple[Node, Client, VM, VM]
) -> None:
    _, client, a, b = pair
    run = kill_database(client, cluster, namespace, victim=a, survivor=b)
    print(f"failover {run.failover_s:.2f}s, API not ready after {run.api_not_ready_s:.2f}s, {run.failed} failed")
    assert run.longest_attempt_s < 1.0, "a connection hung instead of failing fast"
    assert run.failover_s < 10


def test_a_planned_stop_loses_no_connection_and_the_last_vm_leaving_refuses_at_once(
    cluster: Cluster, namespace: str, pair: tuple[Node, Client, VM, VM]
) -> None:
    node, client, a, b = pair
    # The worst moment: kube-proxy has just synced, so it applies the terminating mark only after its minimum
    # sync period (1 s); the VM's database must not stop before that.
    stop = planned_stop(client, leaving=a, staying=b, just_before=make_kube_proxy_sync(cluster, namespace))
    print(f"planned stop: {stop.attempts} connections, {len(stop.failed)} failed, {stop.after_stop} after it")
    assert stop.after_stop > 10
    assert stop.failed == []

    # The last VM leaves: no endpoint is left, and clients are refused at once instead of hanging.
    b.stop_agent()
    gone = time.monotonic()
    refused = wait_until(lambda: [x for x in client.since(gone) if not x.ok], 30, "connections refused")
    assert refused[0].outcome == "OperationalError:2003", refused[0]
    later = client.wait_for(5, refused[0].at)
    assert all(not x.ok and x.took < 0.5 for x in later[1:5]), later[:5]
    assert node.connect(f"mysqldb.{node.search_namespace}.svc.cluster.local", 3306)[0] == "refused"
