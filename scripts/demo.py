"""The README's demo: Istio's mesh-expansion scenario, done by vmesh-agent instead of by hand.

Brings up the test control plane and one simulated VM running MariaDB with the ratings table, runs the
agent inside it, shows what it registered, reads the ratings through the registered endpoint, stops the
agent and shows the endpoint gone.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.cluster.objects import object_name  # noqa: E402
from tests.testbed.cluster import TESTCLUSTER, Cluster  # noqa: E402
from tests.testbed.mariadb import RATINGS_USER, make_template  # noqa: E402
from tests.testbed.vm import VM  # noqa: E402
from tests.testbed.waiting import wait_until  # noqa: E402

NAMESPACE = "vm"


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(cluster: Cluster, *args: str) -> None:
    print(f"$ kubectl {shlex.join(args)}")
    print(cluster.kubectl(*args).stdout.rstrip())


def main() -> int:
    if os.geteuid() != 0:
        sys.exit("the demo needs root (network namespaces); run it with sudo")
    step("Starting the test control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster = Cluster.up()
    cluster.kubectl("apply", "-f", str(ROOT / "packaging/kubernetes/rbac.yaml"))
    with tempfile.TemporaryDirectory(prefix="vmesh-demo-") as tmp:
        work = Path(tmp)
        step("Creating VM 'mysql-vm' (a network namespace) running MariaDB with test.ratings")
        template = make_template(work)
        with VM("mysql-vm", work, cluster) as vm:
            vm.start_mariadb(template)
            print(f"(on the VM) $ hostname -I\n{' '.join(vm.hostname_i())}")

            step("Starting vmesh-agent on the VM with a ServiceAccount token bound to the shipped Role")
            config = vm.write_config(NAMESPACE, cluster.token(NAMESPACE))
            started = time.monotonic()
            vm.start_agent(config)
            name = object_name("mysqldb", vm.name, 4)
            wait_until(lambda: cluster.get("endpointslice", name, NAMESPACE), 30, "registration")
            print(f"registered {time.monotonic() - started:.2f}s after `vmesh-agent run`")
            show(cluster, "get", "svc,endpointslices,leases", "-n", NAMESPACE)

            step("Reading the ratings through the registered endpoint, as the ratings service would")
            s = cluster.get("endpointslice", name, NAMESPACE)
            assert s is not None
            address, port = s["endpoints"][0]["addresses"][0], s["ports"][0]["port"]
            conn = pymysql.connect(host=address, port=port, user=RATINGS_USER[0], password=RATINGS_USER[1],
                                   database="test", connect_timeout=5)
            with conn.cursor() as cur:
                cur.execute("SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID")
                print(f"{address}:{port} test.ratings -> {cur.fetchall()}")
            conn.close()

            step("Stopping the agent (SIGTERM): it removes its EndpointSlice and Lease")
            print(f"agent exited with {vm.stop_agent(signal.SIGTERM)}")
            show(cluster, "get", "svc,endpointslices,leases", "-n", NAMESPACE)

            step("The agent's log (JSON lines, as journald would keep them)")
            print(vm.agent_log.read_text().rstrip())
    if not os.environ.get("VMESH_KEEP_CLUSTER"):
        subprocess.run([str(TESTCLUSTER), "down"], check=False)
    else:
        print(f"\ncontrol plane left running: export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
