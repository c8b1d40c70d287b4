"""The apiserver's refusals, as the agent reports them: one line that says what failed, why, and what to do."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

SLACK = 10.0  # the sync's retry backoff after the failures, plus a round trip, on a 2-core machine


def test_a_missing_namespace_is_named_with_the_fix_and_registration_follows_its_creation(
    cluster: Cluster, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    # Credentials allowed everywhere (a cluster admin's): with the VM's own account the namespace would exist.
    namespace = f"vm-missing-{uuid.uuid4().hex[:6]}"
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    config = vm.write_config(namespace, token=cluster.env["ADMIN_TOKEN"])
    vm.start_agent(config)
    expected = (f"namespace {namespace} does not exist: apply the manifests "
                "(kubectl vmesh install / packaging/kubernetes/rbac.yaml)")
    line = vm.wait_log(lambda line: expected in str(line.get("error", "")), 20, "the missing namespace named")
    print(line)
    assert not any("not found in namespace" in str(entry.get("error", "")) for entry in vm.log_lines())

    def status_naming_it() -> str | None:
        out = vm.cli("status").stdout
        return out if expected in out else None

    status = wait_until(status_naming_it, 10, "status showing the missing namespace")
    print(status)
    # Without its own Lease the agent takes no reaper slot: not because other agents hold them all.
    assert "until this agent holds its VM's Lease" in status and "another agent holds" not in status
    assert f"reachable, sync FAILING: {expected}" in status  # the apiserver answered: it is not unreachable

    try:
        cluster.kubectl("create", "namespace", namespace)
        cluster.apply_rbac(namespace)
        name = object_name("mysqldb", vm.name, 4)

        def ready() -> bool:
            s = cluster.get("endpointslice", name, namespace)
            return bool(s and all(e["conditions"].get("ready") for e in s.get("endpoints") or [{"conditions": {}}]))

        wait_until(ready, SLACK, "registration once the namespace exists, without a restart")
        assert vm.agent is not None and vm.agent.poll() is None
        assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is not None
        wait_until(lambda: expected not in vm.cli("status").stdout, 10, "status no longer naming the namespace")
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
