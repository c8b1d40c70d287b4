"""Debian's Prometheus scrapes a real agent through its TCP metrics listener (`[metrics] listen`) and evaluates
the shipped rules (packaging/monitoring/vmesh-agent.rules.yml, `for:` durations as shipped): every rule
evaluates cleanly on real data, none is active on a healthy VM, and killing MariaDB puts VmeshServiceNotReady in
pending (firing would take its 5 minutes), as stopping the agent does VmeshAgentDown."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_local_api import curl
from tests.testbed.cluster import Cluster
from tests.testbed.monitoring import JOB, RULES, alerts, as_promql, dashboard_expressions, variable_queries
from tests.testbed.ports import free_port
from tests.testbed.prometheus import Prometheus
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until


@pytest.fixture
def watched(cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path,
            tmp_path: Path) -> Iterator[tuple[VM, Prometheus, str]]:
    """A VM with MariaDB and an agent serving metrics on its loopback, and a Prometheus beside it scraping it."""
    vm = make_vm("p")
    vm.start_mariadb(mariadb_template)
    target = f"127.0.0.1:{free_port()}"  # the VM's own network namespace: any port is free there
    vm.start_agent(vm.write_config(namespace, metrics={"listen": target}))

    def passing() -> bool:
        if vm.agent is not None and vm.agent.poll() is not None:
            raise AssertionError(f"the agent exited ({vm.agent.returncode}) with [metrics] listen = {target!r}:\n"
                                 + vm.agent_log.read_text(errors="replace")[-1500:])
        return curl(vm.workdir / "agent.sock", "GET", "/v1/health")[0] == 200

    wait_until(passing, 20, "the agent passing")
    with Prometheus(tmp_path / "prometheus", vm.netns, free_port(), [target], [RULES]) as prometheus:
        wait_until(prometheus.targets_up, 20, "prometheus scraping the agent")
        yield vm, prometheus, target


def _evaluated_on_data(prometheus: Prometheus) -> None:
    """Three scrapes of a ready registration are in, so the rules have been evaluated on it (every second)."""
    wait_until(lambda: prometheus.query('count_over_time(vmesh_registrations{state="ready"}[1m]) >= 3'), 20,
               "three scrapes of the ready registration")


def test_the_shipped_rules_evaluate_cleanly_and_stay_quiet_on_a_healthy_vm(
        watched: tuple[VM, Prometheus, str]) -> None:
    vm, prometheus, target = watched
    _evaluated_on_data(prometheus)
    rules = {rule["name"]: rule for rule in prometheus.rules()}
    assert set(rules) == {a["alert"] for a in alerts()}
    for name, rule in rules.items():
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), name
        if name == "VmeshAgentTokenExpiringSoon":
            # The test bed's tokens live an hour: always "within 7 days", pending until the rule has seen a day
            # without renewal (`changes(...[1d]) == 0` for `for: 1d`): a renewed token never gets to fire.
            assert rule["state"] in ("inactive", "pending"), rule["alerts"]
            continue
        assert rule["state"] == "inactive", (name, rule["alerts"])
    info = prometheus.query("vmesh_build_info")
    assert [(s["metric"]["vm"], s["metric"]["job"], s["metric"]["instance"]) for s in info] == [(vm.name, JOB, target)]
    assert prometheus.query("process_resident_memory_bytes"), "the process collector's figures are scraped"


def test_killing_mariadb_puts_the_not_ready_alert_in_pending(watched: tuple[VM, Prometheus, str],
                                                            mariadb_template: Path) -> None:
    vm, prometheus, target = watched
    _evaluated_on_data(prometheus)
    assert prometheus.alerts("VmeshServiceNotReady") == []
    assert not prometheus.query('ALERTS{alertname="VmeshServiceNotReady"}[1m]'), "never pending before"
    assert vm.mariadb is not None

    vm.mariadb.stop(signal.SIGKILL)
    killed = time.monotonic()
    pending = wait_until(lambda: prometheus.alerts("VmeshServiceNotReady"), 30, "VmeshServiceNotReady pending")
    seconds = time.monotonic() - killed
    print(f"VmeshServiceNotReady pending {seconds:.1f} s after MariaDB was killed")
    assert [a["state"] for a in pending] == ["pending"], "pending for its 5 minutes before it fires"
    labels = pending[0]["labels"]
    assert (labels["service"], labels["vm"], labels["instance"], labels["severity"]) == \
        ("mysqldb", vm.name, target, "warning")
    assert "vmesh-agent services mysqldb" in pending[0]["annotations"]["description"]
    assert prometheus.alerts("VmeshAgentDown") == [], "the agent itself is fine"

    vm.start_mariadb(mariadb_template)  # on its own datadir again
    wait_until(lambda: not prometheus.alerts("VmeshServiceNotReady"), 30, "VmeshServiceNotReady resolved")
    print(f"resolved {time.monotonic() - killed:.1f} s after the kill")


def test_a_stopped_agent_puts_agent_down_in_pending(watched: tuple[VM, Prometheus, str]) -> None:
    vm, prometheus, target = watched
    _evaluated_on_data(prometheus)
    assert prometheus.alerts("VmeshAgentDown") == []
    assert vm.stop_agent() == 0
    down = wait_until(lambda: prometheus.alerts("VmeshAgentDown"), 30, "VmeshAgentDown pending")
    assert [(a["state"], a["labels"]["instance"], a["labels"]["severity"]) for a in down] == \
        [("pending", target, "critical")]


# Panels whose queries select only trouble (`... > 0`, not ready, failing): empty on a healthy VM.
QUIET_PANELS = {"Not ready registrations/A", "Services in maintenance/A", "Services whose sync fails/A",
                "Per-VM health/D"}


def test_the_dashboard_queries_run_on_the_scraped_agent(watched: tuple[VM, Prometheus, str], namespace: str) -> None:
    vm, prometheus, _ = watched
    _evaluated_on_data(prometheus)
    wait_until(lambda: prometheus.query("vmesh_heartbeat_age_seconds"), 10, "a Lease renewal scraped")
    empty = sorted(where for where, expr in dashboard_expressions().items() if not prometheus.query(as_promql(expr)))
    assert empty == sorted(QUIET_PANELS), "panels without data on a healthy VM"
    variables = variable_queries()
    assert [s["metric"]["vm"] for s in prometheus.query(as_promql(variables["vm"]))] == [vm.name]
    assert [s["metric"]["namespace"] for s in prometheus.query(as_promql(variables["namespace"]))] == [namespace]
    assert [s["metric"]["job"] for s in prometheus.query(variables["job"])] == [JOB]
