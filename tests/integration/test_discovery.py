"""Discovery and addressing inside real network namespaces, against `hostname -I` and real MariaDB."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import AGENT, VM
from tests.testbed.waiting import wait_until
from tests.testbed.web import http_server

ONE_INTERVAL = 1.0  # discovery.interval in the VMs' test config
SLACK = 4.0  # one discovery interval, plus a sync round trip and process scheduling on a 2-core machine
REMOVE_AFTER = 3.0  # discovery.remove_after where a test waits for a vanished port to go


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

    def connections() -> int:
        return int(str(db.query("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1]))

    before = connections()
    _, report = vm.discover()
    assert connections() == before + 1  # the query's own: discover connected to nothing
    entry = listener(report, 3306)
    # Not probed (a loopback listener can never be registered): its port names what it likely is.
    assert (entry["address"], entry["protocol"], entry["likely_protocol"], entry["decision"]) == (
        "127.0.0.1", "unknown", "mysql", "skip")
    assert entry["reason"].startswith("loopback only: bound to 127.0.0.1")
    assert "bind-address = 0.0.0.0" in entry["reason"]

    vm.start_agent(vm.write_config(namespace))
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
    vm.start_agent(vm.write_config(namespace,
                                   discovery={"remove_after": f"{REMOVE_AFTER:g}s"}))
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

    # The old port goes after remove_after; then the new one, checked and passing, is ready.
    wait_until(lambda: ports() == [(3307, True)], REMOVE_AFTER + ONE_INTERVAL + SLACK,
               "the old port removed and the new one ready")
    svc = cluster.get("service", "mysqldb", namespace)
    assert svc is not None
    assert 3307 in [p["port"] for p in svc["spec"]["ports"]]


def test_vanished_service_is_removed_after_the_grace(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, discovery={"remove_after": "3s"}))
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
    vm.start_agent(vm.write_config(namespace))
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



def silent_listener(vm: VM, port: int) -> subprocess.Popen[bytes]:
    """A socket that listens (the kernel completes every handshake) and never says a word, as a service where
    the client speaks first does on a port the agent only reads a greeting from."""
    code = (f"import socket, time; s = socket.create_server(('0.0.0.0', {port})); print('up', flush=True); "
            "time.sleep(3600)")
    proc = subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


def test_a_silent_listener_does_not_delay_the_others_registration(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    silent = silent_listener(vm, 9000)
    probe_timeout = 8.0
    try:
        config = vm.write_config(namespace,
                                 discovery={"probe_timeout": f"{probe_timeout:g}s"})
        started = time.monotonic()
        vm.start_agent(config)
        wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, True)], probe_timeout + SLACK,
                   "mysqldb ready")
        took = time.monotonic() - started
        print(f"mysqldb ready {took:.2f}s after the agent was started, beside a listener silent for {probe_timeout:g}s")
        assert took < probe_timeout / 2  # process start and imports included; waiting for the probe took >= 8 s
    finally:
        silent.kill()
        silent.wait()
        assert silent.stdout is not None
        silent.stdout.close()


def test_mariadb_that_greets_only_after_the_probe_timeout_is_registered_once_it_does(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """Busy at boot: the socket listens but the greeting comes late. Silence is not an answer."""
    vm = make_vm("a")
    db = vm.start_mariadb(mariadb_template)
    db.pause()
    try:
        vm.start_agent(vm.write_config(namespace))
        skipped = vm.wait_log(lambda line: line.get("event") == "listener skipped"
                              and line.get("listener") == "0.0.0.0:3306", 20, "the silent MariaDB skipped")
        assert skipped["reason"] == "no greeting within 1 s; will retry"
        _, report = vm.discover()
        assert listener(report, 3306)["reason"] == "no greeting within 1 s; will retry"
    finally:
        db.resume()
    # Re-probed at the agent's next look (after 1 s, doubling): registered once the greeting comes.
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(vm.address, True)], 4 * ONE_INTERVAL + SLACK,
               "registration once MariaDB greets")


def test_a_listener_on_an_address_that_left_the_vm_is_unregistered(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    extra = vm.address.rsplit(".", 1)[0] + "." + str((int(vm.address.rsplit(".", 1)[1]) + 50) % 250 + 2)
    vm.ip("addr", "add", f"{extra}/16", "dev", "eth0")
    vm.start_mariadb(mariadb_template, bind=extra)
    vm.start_agent(vm.write_config(namespace))
    wait_until(lambda: slice_addresses(cluster, vm, namespace) == [(extra, True)], 20, "registration at the address")

    vm.ip("addr", "del", f"{extra}/16", "dev", "eth0")
    assert f"{extra}:3306" in vm.exec("ss", "-ltnH").stdout  # the kernel keeps the socket listening there
    name = object_name("mysqldb", vm.name, 4)
    wait_until(lambda: cluster.get("endpointslice", name, namespace) is None, ONE_INTERVAL + SLACK,
               "the registration removed with its address")
    _, report = vm.discover()
    entry = listener(report, 3306)
    assert entry["decision"] == "skip"
    assert entry["reason"] == f"bound to {extra}, which is not an address of this VM (any more)"


def test_a_listener_on_an_ipv4_mapped_address_is_registered_at_that_ipv4_address(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM]
) -> None:
    """As Java binds an IPv4 address: an IPv6 socket on ::ffff:<VM address>. It was skipped as bound to an address
    that is not the VM's (issue 20, item 9)."""
    vm = make_vm("a")
    mapped = f"::ffff:{vm.address}"
    with http_server(vm, mapped, 8080):
        assert f"[{mapped}]:8080" in vm.exec("ss", "-ltnH").stdout, "an IPv6 socket on the mapped address"
        config = vm.write_config(namespace, discovery={"allow": {"http": "web"}})
        vm.start_agent(config)
        slice_name = object_name("web", vm.name, 4)

        def web() -> list[tuple[str, bool]]:
            s = cluster.get("endpointslice", slice_name, namespace)
            return [(a, bool(e["conditions"].get("ready"))) for e in (s or {}).get("endpoints") or []
                    for a in e["addresses"]]

        wait_until(lambda: web() == [(vm.address, True)], 20, "web registered at the IPv4 address, ready")
        assert cluster.get("endpointslice", object_name("web", vm.name, 6), namespace) is None, "no IPv6 slice"
        _, report = vm.discover(config)
        entry = listener(report, 8080)
        assert (entry["protocol"], entry["decision"], entry["reason"]) == (
            "http", "register", f"listens on {vm.address} only; registered there"), entry
