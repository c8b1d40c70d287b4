"""The README's demo: Istio's mesh-expansion scenario, done by vmesh-agent instead of by hand.

Brings up the test control plane, a node (a network namespace running kube-proxy and CoreDNS, where a pod's
client runs) and one simulated VM running MariaDB with the ratings table; installs the manifests with
`kubectl vmesh install`, enrolls the VM with `kubectl vmesh enroll` and runs the agent inside it on that bundle
alone, shows what it registered (and `kubectl vmesh get vms`), and has the pod resolve
`mysqldb.vm.svc.cluster.local`, connect through the ClusterIP, read the ratings, and see a rating changed on the
VM; then stops the agent and shows the endpoint gone and the client refused.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.testbed.cluster import TESTCLUSTER, Cluster  # noqa: E402
from tests.testbed.mariadb import make_template  # noqa: E402
from tests.testbed.node import Node  # noqa: E402
from tests.testbed.plugin import install_bundle, kubectl_vmesh  # noqa: E402
from tests.testbed.vm import VM  # noqa: E402
from tests.testbed.waiting import wait_until  # noqa: E402

NAMESPACE = "vm"
NAME = f"mysqldb.{NAMESPACE}.svc.cluster.local"
RATINGS = "SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID"


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(cluster: Cluster, *args: str) -> None:
    print(f"$ kubectl {shlex.join(args)}")
    print(cluster.kubectl(*args).stdout.rstrip())


def own_slice(cluster: Cluster, vm: VM) -> dict[str, Any] | None:
    found = cluster.list("endpointslice", NAMESPACE, f"vmesh.dev/vm={vm.name}")
    return found[0] if found else None


def vmesh(cluster: Cluster, *args: str, cwd: Path | None = None) -> None:
    print(f"$ kubectl vmesh {shlex.join(args)}")
    print(kubectl_vmesh(cluster, *args, cwd=cwd).stdout.rstrip())


def enroll(cluster: Cluster, vm: VM, work: Path) -> Path:
    step(f"Enrolling the VM: its own ServiceAccount vmesh-vm-{vm.name}, and the bundle for /etc/vmesh-agent/")
    # --server: the apiserver as the VM reaches it (the admin's kubeconfig says 127.0.0.1).
    vmesh(cluster, "enroll", vm.name, "-n", NAMESPACE, "--server", cluster.url_from_vms, cwd=work)
    bundle = work / f"vmesh-{vm.name}"
    print(f"$ ls -l {bundle.name}/ && cat {bundle.name}/config.toml")
    print("\n".join(f"{oct(p.stat().st_mode & 0o777)[2:]}  {p.name}" for p in sorted(bundle.iterdir())))
    print((bundle / "config.toml").read_text().rstrip())
    return bundle


def run_agent(cluster: Cluster, node: Node, vm: VM, bundle: Path) -> None:
    step("Copying the bundle to the VM and starting vmesh-agent there, with nothing else set up")
    config = install_bundle(vm, bundle)
    started = time.monotonic()
    vm.start_agent(config)
    wait_until(lambda: own_slice(cluster, vm), 30, "registration")
    print(f"registered {time.monotonic() - started:.2f}s after `vmesh-agent run`")
    show(cluster, "get", "svc,endpointslices,leases", "-n", NAMESPACE)
    wait_until(lambda: '"ready": 1' in kubectl_vmesh(cluster, "get", "vms", "-n", NAMESPACE, "-o", "json").stdout,
               30, "the endpoint ready")
    vmesh(cluster, "get", "vms", "-n", NAMESPACE)

    step("A pod on the node reads the ratings through the Service name, as Istio's ratings service would")
    print(f"(on the node) $ getent hosts {NAME}")
    cluster_ip = wait_until(lambda: node.resolve(NAME), 30, f"{NAME} in CoreDNS")[0]
    print(f"{cluster_ip}  {NAME}   (the Service's ClusterIP; kube-proxy routes it to {vm.address}:3306)")
    print(f"(on the node) $ mariadb -h {NAME} -u ratings -e '{RATINGS}' test")
    print(wait_until(lambda: read(node), 30, "the ratings through the ClusterIP"))

    step("On the VM, review 2's rating changes from 4 to 1; the pod reads the change through the name")
    vm.exec("mariadb", "--no-defaults", f"--socket={vm.mariadb.socket if vm.mariadb else ''}", "-u", "root",
            "-e", "UPDATE test.ratings SET Rating = 1 WHERE ReviewID = 2")
    print(f"(on the node) $ mariadb -h {NAME} -u ratings -e '{RATINGS}' test")
    print(read(node))

    step("Stopping the agent (SIGTERM): it removes its EndpointSlice and Lease")
    print(f"agent exited with {vm.stop_agent(signal.SIGTERM)}")
    show(cluster, "get", "svc,endpointslices,leases", "-n", NAMESPACE)
    outcome, took = wait_until(lambda: refused(node), 30, "the endpoint gone from kube-proxy")
    print(f"(on the node) a connect to {NAME}:3306 is now {outcome} within {took:.3f}s: not left hanging")

    step("The agent's log (JSON lines, as journald would keep them)")
    print(vm.agent_log.read_text().rstrip())


def refused(node: Node) -> tuple[str, float] | None:
    attempt = node.connect(NAME, 3306)
    return attempt if attempt[0] != "ok" else None


def read(node: Node) -> str:
    try:
        return node.mysql(NAME, RATINGS, timeout=2)
    except AssertionError:
        return ""


def main() -> int:
    if os.geteuid() != 0:
        sys.exit("the demo needs root (network namespaces); run it with sudo")
    begun = time.monotonic()
    step("Starting the test control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster = Cluster.up()
    step("Installing what vmesh-agent needs in the cluster, once (namespace, Role, policy)")
    vmesh(cluster, "install")
    with tempfile.TemporaryDirectory(prefix="vmesh-demo-") as tmp:
        work = Path(tmp)
        step("Starting a node: kube-proxy (nftables) and CoreDNS in a network namespace, where a pod runs")
        with Node(work, cluster, search_namespace=NAMESPACE) as node:
            step("Creating VM 'mysql-vm' (a network namespace) running MariaDB with test.ratings")
            template = make_template(work)
            with VM("mysql-vm", work, cluster) as vm:
                vm.start_mariadb(template)
                print(f"(on the VM) $ hostname -I\n{' '.join(vm.hostname_i())}")
                run_agent(cluster, node, vm, enroll(cluster, vm, work))
    print(f"\nthe demo took {time.monotonic() - begun:.1f}s")
    if not os.environ.get("VMESH_KEEP_CLUSTER"):
        subprocess.run([str(TESTCLUSTER), "down"], check=False)
    else:
        print(f"\ncontrol plane left running: export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
