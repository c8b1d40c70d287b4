"""Discovery and addressing inside real network namespaces, against `hostname -I` and real MariaDB."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import AGENT, VM
from tests.testbed.waiting import wait_until

ONE_INTERVAL = 1.0  # discovery.interval in the VMs' test config
SLACK = 4.0  # one discovery interval, plus a sync round trip and process scheduling on a 2-core machine


def candidates(vm: VM) -> list[str]:
    _, report = vm.discover()
    found: list[str] = report["addresses"]["candidates"]
    return found


def test_one_interface(make_vm: Callable[[str], VM]) -> None:
    vm = make_vm("a")
    assert candidates(vm) == vm.hostname_i() == [vm.address]


def test_two_interfaces_secondary_addresses_ipv6_and_a_down_interface(make_vm: Callable[[str], VM]) -> None:
    vm = make_vm("a")
    vm.ip("link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    vm.ip("addr", "add", "198.19.7.10/24", "dev", "eth1")
    vm.ip("addr", "add", "198.19.7.11/24", "dev", "eth1")  # secondary
    vm.ip("addr", "add", "2001:db8:7::10/64", "dev", "eth1", "nodad")
    vm.ip("link", "set", "eth1", "up")
    vm.ip("addr", "add", "198.18.250.9/16", "dev", "eth0")  # secondary on eth0
    vm.ip("link", "add", "eth2", "type", "veth", "peer", "name", "eth2-peer")  # down: never listed
    vm.ip("addr", "add", "198.19.8.10/24", "dev", "eth2")
    wait_until(lambda: any(a.startswith("fe80") for a in vm.ip("-6", "-o", "addr").split()), 5, "a link-local address")

    expected = vm.hostname_i()
    assert expected == [vm.address, "198.18.250.9", "198.19.7.10", "198.19.7.11", "2001:db8:7::10"]
    assert candidates(vm) == expected


def test_docker_bridge_is_skipped_and_the_reason_says_so(make_vm: Callable[[str], VM]) -> None:
    vm = make_vm("a")
    # The kernel lists IPv4 addresses in interface-index order: to put docker0 first, the VM's first
    # interface becomes docker0 and a newer one becomes eth0.
    vm.ip("link", "set", "eth0", "down")
    vm.ip("link", "set", "eth0", "name", "docker0")
    vm.ip("addr", "flush", "dev", "docker0")
    vm.ip("addr", "add", "172.17.0.1/16", "dev", "docker0")
    vm.ip("link", "set", "docker0", "up")
    vm.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    vm.ip("addr", "add", f"{vm.address}/16", "dev", "eth0")
    vm.ip("link", "set", "eth0", "up")
    _, report = vm.discover()
    assert report["addresses"]["candidates"] == vm.hostname_i() == ["172.17.0.1", vm.address]
    assert report["addresses"]["advertised"] == vm.address
    assert "skipped docker0" in report["addresses"]["reason"]


def test_no_address_at_all_is_a_clear_error(make_vm: Callable[[str], VM]) -> None:
    vm = make_vm("a")
    vm.ip("addr", "flush", "dev", "eth0")
    vm.ip("-6", "addr", "flush", "dev", "eth0")
    code, report = vm.discover()
    assert vm.hostname_i() == []
    assert code == 3
    assert report["addresses"] == {"candidates": [], "advertised": None, "interface": None,
                                   "reason": "no address: no interface is up with a non-loopback address"}


def test_human_output_is_a_short_table(make_vm: Callable[[str], VM], mariadb_template: Path) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    result = vm.exec(*AGENT, "discover")
    lines = result.stdout.splitlines()
    assert lines[0] == f"address:    {vm.address} (first address, as `hostname -I` lists it: eth0)"
    row = next(line for line in lines if line.startswith("0.0.0.0:3306"))
    assert row.split()[:5] == ["0.0.0.0:3306", "mysql", "mariadbd", "register", "mysqldb"]


def slice_addresses(cluster: Cluster, vm: VM, namespace: str) -> list[tuple[str, bool]]:
    s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    if not s:
        return []
    return [(a, bool(e["conditions"].get("ready"))) for e in s.get("endpoints") or [] for a in e["addresses"]]


def listener(report: dict[str, Any], port: int) -> dict[str, Any]:
    return next(entry for entry in report["listeners"] if entry["port"] == port)


def test_loopback_only_mariadb_is_skipped_with_the_fix_then_registered_when_rebound(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template, bind="127.0.0.1")
    _, report = vm.discover()
    entry = listener(report, 3306)
    assert (entry["address"], entry["protocol"], entry["decision"]) == ("127.0.0.1", "mysql", "skip")
    assert "bind-address = 0.0.0.0" in entry["reason"]

    vm.start_agent(vm.write_config(namespace, cluster.token(namespace)))
    vm.wait_log(lambda line: line.get("event") == "listener skipped" and "bind-address" in line.get("reason", ""),
                10, "the bind-address warning")
    assert cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace) is None

    db.stop()
    db.bind = "0.0.0.0"
    db.start()
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, True)], ONE_INTERVAL + SLACK,
               "registration within one discovery interval of the rebind")


def test_mariadb_started_later_then_stopped_then_moved_to_another_port(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_agent(vm.write_config(namespace, cluster.token(namespace)))
    lease = wait_until(lambda: cluster.get("lease", f"vmesh-{vm.name}", namespace), 20, "the agent's Lease")
    assert lease
    assert cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace) is None

    db = vm.start_mariadb(mariadb_template)
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, True)], ONE_INTERVAL + SLACK,
               "registration within one interval of MariaDB starting")

    db.stop()
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, False)], ONE_INTERVAL + SLACK,
               "the endpoint marked not ready, not deleted")

    db.port = 3307
    db.start()

    def ports() -> list[tuple[int, bool]]:
        s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
        if not s:
            return []
        return sorted((p["port"], all(e["conditions"]["ready"] for e in s["endpoints"])) for p in s["ports"])

    wait_until(lambda: 3307 in [p for p, _ in ports()], ONE_INTERVAL + SLACK, "the new port registered")
    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert 3307 in [p["port"] for p in svc["spec"]["ports"]]


def test_vanished_service_is_removed_after_the_grace(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, cluster.token(namespace), discovery={"remove_after": "3s"}))
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, True)], 20, "registration")
    db.stop()
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, False)], ONE_INTERVAL + SLACK,
               "not ready first")
    wait_until(lambda: cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace) is None, 3 + SLACK,
               "removal after remove_after")


def test_address_change_moves_the_registration(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, cluster.token(namespace)))
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, True)], 20, "registration")

    old = vm.address
    new = old.rsplit(".", 1)[0] + "." + str((int(old.rsplit(".", 1)[1]) + 100) % 250 + 2)
    # As a DHCP renewal with a new lease would: the old address goes, the new one comes.
    vm.ip("addr", "del", f"{old}/16", "dev", "eth0")
    vm.ip("addr", "add", f"{new}/16", "dev", "eth0")
    vm.ip("route", "replace", "default", "via", cluster.env["GATEWAY"])
    vm.address = new
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(new, True)], ONE_INTERVAL + SLACK,
               "the new address within one interval, the old one gone")

