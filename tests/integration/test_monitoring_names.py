"""Every metric the shipped alerting rules and dashboard (packaging/monitoring) use is one a real agent serves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.integration.test_local_api import curl
from tests.testbed.cluster import Cluster
from tests.testbed.monitoring import SYNTHETIC, served_names, used_metric_names
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until


def test_every_metric_the_rules_and_dashboard_use_is_served(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("n")
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace))
    wait_until(lambda: vm.cli("status", "--json").returncode == 0, 20, "the agent passing")
    used = used_metric_names()
    assert {"vmesh_registrations", "vmesh_reaped_vms_total", "process_resident_memory_bytes"} <= set(used)
    missing: dict[str, list[str]] = {}

    def all_served() -> bool:
        code, text = curl(vm.workdir / "agent.sock", "GET", "/metrics")
        assert code == 200, text
        served = served_names(text)
        missing.clear()
        missing.update({name: sorted(where) for name, where in used.items()
                        if name not in served and name not in SYNTHETIC})
        return not missing

    # Some series appear after the first Lease renewal, health check or sync: a few seconds at the test intervals.
    try:
        wait_until(all_served, 15, "every metric the rules and the dashboard use", interval=0.5)
    except AssertionError:
        raise AssertionError("used in packaging/monitoring but not served by the agent's /metrics:\n" + "\n".join(
            f"  {name}: {', '.join(where)}" for name, where in sorted(missing.items()))) from None
