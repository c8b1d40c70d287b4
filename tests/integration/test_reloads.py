"""SIGHUP against a real agent in a VM: a reload applies what it changed to the sockets already listening, and it
is applied whatever the agent is doing, registering or not yet (issue 20)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until
from tests.testbed.web import http_server

SLACK = 4.0  # a discovery pass and a sync round trip, with process scheduling on a 2-core machine


def endpoints(cluster: Cluster, namespace: str, vm: VM, service: str) -> list[tuple[str, bool]]:
    """(address, ready) of each endpoint of `service`'s IPv4 slice for `vm`; [] while there is none."""
    s = cluster.get("endpointslice", object_name(service, vm.name, 4), namespace)
    return [(a, bool(e["conditions"].get("ready"))) for e in (s or {}).get("endpoints") or [] for a in e["addresses"]]


def reloads(vm: VM) -> int:
    return sum(line.get("event") == "config reloaded" for line in vm.log_lines())


def services(vm: VM) -> list[dict[str, Any]]:
    result = vm.cli("services", "--json")
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def test_allowing_a_protocol_registers_the_listener_already_running(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM]
) -> None:
    """An HTTP server runs before http is in discovery.allow: its socket is not even connected to. Allowing it
    and reloading must register it; it stayed "not probed" for the socket's life (issue 20, item 6)."""
    vm = make_vm("a")
    with http_server(vm, "0.0.0.0", 8080):
        agent = vm.start_agent(vm.write_config(namespace))  # allow: mysql only, the default
        skipped = vm.wait_log(lambda line: line.get("event") == "listener skipped"
                              and line.get("listener") == "0.0.0.0:8080", 20, "the http listener not probed")
        assert skipped["reason"].startswith("not probed (port 8080 is http's)"), skipped
        wait_until(lambda: cluster.get("lease", f"vmesh-{vm.name}", namespace), 20, "the agent registering")
        assert cluster.get("endpointslice", object_name("web", vm.name, 4), namespace) is None

        token = (vm.workdir / "token").read_text()  # the same token: only discovery.allow changes
        vm.write_config(namespace, token=token, discovery={"allow": {"mysql": "mysqldb", "http": "web"}})
        agent.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads(vm) == 1, 10, "the reload")
        wait_until(lambda: endpoints(cluster, namespace, vm, "web") == [(vm.address, True)], SLACK,
                   "the running http server registered after the reload")
        code, report = vm.discover(vm.workdir / "config.toml")
        assert code == 0
        row = next(entry for entry in report["listeners"] if entry["port"] == 8080)
        assert (row["protocol"], row["decision"], row["service"]) == ("http", "register", "web"), row


def test_a_reload_while_not_registering_is_applied_then_registered(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM]
) -> None:
    """The agent holds another VM's token: it runs, critical, registering nothing. A SIGHUP then was not applied
    (the reload loop began only with registering, issue 20, item 6): it must be, at once, and the registration
    that follows the right token must be the reloaded config's."""
    vm = make_vm("a")
    other = cluster.token(namespace, vm=f"b-{vm.name}")
    with http_server(vm, "0.0.0.0", 9000):
        config = vm.write_config(namespace, token=other)
        agent = vm.start_agent(config)
        vm.wait_log(lambda line: "not registering" in str(line.get("event", "")), 20, "another VM's token refused")
        assert services(vm) == []

        # The admin declares the service on port 9000 (not a protocol discovery finds) and reloads.
        config.write_text(config.read_text() + '\n[[service]]\nname = "web"\nport = 9000\n')
        agent.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads(vm) == 1, 10, "the reload applied while not registering")
        web = wait_until(lambda: [s for s in services(vm) if s["name"] == "web"], SLACK, "web in the agent's view")
        assert [(r["address"], r["port"]) for r in web[0]["registrations"]] == [(vm.address, 9000)]
        status = json.loads(vm.cli("status", "--json").stdout)
        assert (status["credentials"]["kind"], status["health"]) == ("other-vm", "critical"), status
        assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is None, "still not registering"

        (vm.workdir / "token").write_text(cluster.token(namespace, vm=vm.name))  # the admin installs the right one
        wait_until(lambda: endpoints(cluster, namespace, vm, "web") == [(vm.address, True)], 20,
                   "registered with its own token, as the reloaded config says")
        svc = cluster.get("service", "web", namespace)
        assert svc is not None and [p["port"] for p in svc["spec"]["ports"]] == [9000]
        assert reloads(vm) == 1, "no second reload: the one asked for was applied when it was asked for"
