"""A test standing in for systemd: a notify socket, NOTIFY_SOCKET and WATCHDOG_USEC, and the messages' order."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.notify import FakeSystemd
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_ready_status_watchdog_stopping_in_order(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, systemd: FakeSystemd
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    # The stop lasts at least the drain, ten watchdog intervals: a ping sent while stopping cannot slip past
    # the assertion below by luck of timing.
    vm.start_agent(vm.write_config(namespace, sync={"drain": "1s"}),
                   env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "200000"})

    wait_until(lambda: "READY=1" in systemd.drain(), 20, "READY=1")
    ready_at = systemd.messages.index("READY=1")
    # READY=1 only once the API serves and the first sync attempt is done.
    assert vm.cli("status", "--json").returncode == 0
    assert cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace) is not None
    statuses = [m for m in systemd.messages if m.startswith("STATUS=")]
    assert statuses[0] == "STATUS=starting"
    wait_until(lambda: f"STATUS=registered mysqldb at {vm.address}" in systemd.drain(), 5, "the status in words")
    wait_until(lambda: systemd.drain().count("WATCHDOG=1") >= 3, 5, "watchdog pings every WATCHDOG_USEC/2")

    assert vm.mariadb is not None
    vm.mariadb.stop(signal.SIGKILL)
    wait_until(lambda: any(m.startswith("STATUS=not ready: mysqldb") for m in systemd.drain()), 5,
               "the status follows health")

    assert vm.stop_agent() == 0
    messages = systemd.drain()
    assert "STOPPING=1" in messages
    stopping_at = messages.index("STOPPING=1")
    assert ready_at < stopping_at
    assert messages.index("STATUS=starting") < ready_at
    assert "STATUS=draining: endpoints marked terminating" in messages[stopping_at:]
    assert "WATCHDOG=1" not in messages[stopping_at:], "no watchdog pings once stopping"


def test_reload_sends_reloading_then_ready_and_keeps_the_old_config_when_invalid(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, systemd: FakeSystemd
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    config = vm.write_config(namespace)
    agent = vm.start_agent(config, env={"NOTIFY_SOCKET": str(systemd.path)})
    wait_until(lambda: "READY=1" in systemd.drain(), 20, "READY=1")
    slice_before = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    assert slice_before is not None

    good = config.read_text()
    config.write_text(good + '\n[[service]]\nname = "billing"\nport = 3306\nprotocol = "tcp"\n')
    agent.send_signal(signal.SIGHUP)
    billing = object_name("billing", vm.name, 4)
    wait_until(lambda: cluster.get("endpointslice", billing, namespace), 10, "the new service")
    messages = systemd.drain()
    reloading = messages.index("RELOADING=1")
    assert "READY=1" in messages[reloading:]
    after = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == slice_before["metadata"]["resourceVersion"], \
        "an unchanged registration is left untouched by a reload"

    config.write_text(good.replace('interval = "1s"', 'interval = "soon"', 1))
    agent.send_signal(signal.SIGHUP)
    line = vm.wait_log(lambda entry: entry.get("event") == "reload rejected; keeping the running config", 10,
                       "the rejection")
    assert "discovery.interval" in line["error"]
    assert agent.poll() is None
    assert cluster.get("endpointslice", billing, namespace) is not None
