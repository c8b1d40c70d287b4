"""The real consumers of what the agent writes: a pod's client resolves the Service name through CoreDNS and
connects through the ClusterIP that kube-proxy routes to the VM, as the seed promised
(`mysqldb.vm.svc.cluster.local:3306`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.node import Node
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

READY_TIMEOUT = 30
RATINGS = "SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID"


@pytest.fixture
def node(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Node]:
    with Node(tmp_path, cluster, search_namespace=namespace) as n:
        yield n


def set_rating(vm: VM, review: int, rating: int) -> None:
    """On the VM itself, as its administrator (root over the server's unix socket)."""
    assert vm.mariadb is not None
    conn = pymysql.connect(unix_socket=str(vm.mariadb.socket), user="root", database="test")
    with conn.cursor() as cur:
        cur.execute("UPDATE ratings SET Rating = %s WHERE ReviewID = %s", (rating, review))
    conn.commit()
    conn.close()


def test_a_pod_reads_and_sees_changes_through_the_service_name(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, node: Node
) -> None:
    vm = make_vm("db")
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace))
    name = f"mysqldb.{namespace}.svc.cluster.local"

    service = wait_until(lambda: cluster.get("service", "mysqldb", namespace), READY_TIMEOUT, "the Service")
    cluster_ip = service["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.96.")
    assert wait_until(lambda: node.resolve(name), READY_TIMEOUT, f"{name} in CoreDNS") == [cluster_ip]
    assert node.resolve("mysqldb") == [cluster_ip], "the pod's search path finds the short name"

    def read(host: str) -> str:
        try:
            return node.mysql(host, RATINGS, timeout=2)
        except AssertionError:
            return ""

    assert wait_until(lambda: read(name), READY_TIMEOUT, "the ratings through the name") == "1\t5\n2\t4"
    assert read(cluster_ip) == "1\t5\n2\t4"

    set_rating(vm, 2, 1)
    assert read(name) == "1\t5\n2\t1", "the change made on the VM is what the pod reads"

    # The agent stops: the endpoint goes, and a client is refused at once instead of left hanging.
    vm.stop_agent()

    def not_served() -> tuple[str, float] | None:
        attempt = node.connect(name, 3306)
        return attempt if attempt[0] != "ok" else None

    outcome, took = wait_until(not_served, READY_TIMEOUT, "the endpoint gone from kube-proxy")
    assert outcome == "refused" and took < 0.5, (outcome, took)
    assert node.connect(cluster_ip, 3306)[0] == "refused"
