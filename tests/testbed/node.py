"""A cluster node stand-in: where a pod's client runs, with the cluster's real Service plumbing.

A network namespace on the VMs' bridge (like a node on the VMs' LAN) runs kube-proxy (nftables mode) and
CoreDNS (the `kubernetes` plugin), both built from the Go module proxy by tests/cluster/build-node and both
talking to the test apiserver with the admin token. Its /etc/resolv.conf (the one `ip netns exec` mounts
from /etc/netns/<netns>/) points at that CoreDNS with a pod's search path, so a client inside resolves
`mysqldb.<ns>.svc.cluster.local` and connects through the ClusterIP that kube-proxy routes to the VMs'
endpoints. Nothing is changed in the root namespace: kube-proxy is told to leave the global conntrack
sysctls alone, and its rules live in the node's own namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from tests.testbed.cluster import ROOT, Cluster
from tests.testbed.mariadb import RATINGS_USER
from tests.testbed.vm import add_netns, del_netns, next_address, sh
from tests.testbed.waiting import terminate, wait_until

BUILD_NODE = ROOT / "tests" / "cluster" / "build-node"
CLUSTER_DOMAIN = "cluster.local"
STARTUP_TIMEOUT = 60


_CONNECT = """\
import socket, sys, time
started = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()
    outcome = "ok"
except ConnectionRefusedError:
    outcome = "refused"
except TimeoutError:
    outcome = "timeout"
except OSError as exc:
    outcome = type(exc).__name__
print(outcome, round(time.monotonic() - started, 3))
"""


def node_binaries() -> Path:
    """kube-proxy and coredns, built once and cached (tests/cluster/build-node prints their directory)."""
    result = subprocess.run([str(BUILD_NODE)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise AssertionError(f"tests/cluster/build-node failed: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class Node:
    """One node with kube-proxy and CoreDNS. Use as a context manager, or call destroy()."""

    def __init__(self, workdir: Path, cluster: Cluster, search_namespace: str = "default") -> None:
        self.name = f"vmesh-node-{uuid.uuid4().hex[:6]}"
        self.netns = self.name
        self.host_if = f"vn{os.getpid() % 1000}{self.name[-6:]}"[:15]
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)
        self.cluster = cluster
        self.address = next_address()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.resolv_dir = Path("/etc/netns") / self.netns
        self.search_namespace = search_namespace
        bins = node_binaries()
        try:
            add_netns(self.netns, self.host_if, self.address, cluster.env["GATEWAY"], sources="files dns")
            self._register_node()
            self._resolv_conf(search_namespace)
            kubeconfig = self._kubeconfig()
            self._start("coredns", [str(bins / "coredns"), "-conf", str(self._corefile(kubeconfig))])
            self._start("kube-proxy", [
                str(bins / "kube-proxy"), "--kubeconfig", str(kubeconfig), "--proxy-mode", "nftables",
                "--hostname-override", self.name, "--bind-address", self.address,
                # Leave the machine's conntrack settings alone (kube-proxy writes the global ones otherwise).
                "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
                "--conntrack-tcp-timeout-close-wait", "0",
                "--metrics-bind-address", "", "--healthz-bind-address", "127.0.0.1:10256",
                "--detect-local-mode", "ClusterCIDR", "--cluster-cidr", "10.244.0.0/16",
            ])
            wait_until(lambda: self._ready("http://127.0.0.1:8181/ready"), STARTUP_TIMEOUT, "CoreDNS ready")
            wait_until(lambda: self._ready("http://127.0.0.1:10256/healthz"), STARTUP_TIMEOUT, "kube-proxy healthy")
        except BaseException:
            self.destroy()
            raise

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- what a pod on this node does -------------------------------------------------------------------

    def exec(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} on {self.name}: {result.stderr.strip()}")
        return result

    def resolve(self, name: str) -> list[str]:
        """The addresses the node's resolver (CoreDNS, through resolv.conf) gives for `name`."""
        result = self.exec("getent", "ahostsv4", name, check=False)
        return sorted({line.split()[0] for line in result.stdout.splitlines()})

    def connect(self, host: str, port: int, timeout: float = 2.0) -> tuple[str, float]:
        """One TCP connect from the node: ("ok" | "refused" | "timeout" | another error's name, seconds)."""
        result = self.exec(sys.executable, "-c", _CONNECT, host, str(port), str(timeout), timeout=timeout + 10)
        outcome, seconds = result.stdout.split()
        return outcome, float(seconds)

    def mysql(self, host: str, query: str, *, port: int = 3306, timeout: float = 5) -> str:
        """`query` through `host` (a Service name or ClusterIP) and `port` as the ratings user; its rows,
        tab-separated."""
        user, password = RATINGS_USER
        result = self.exec("mariadb", "--no-defaults", "-h", host, "-P", str(port), "-u", user, f"-p{password}",
                           "-N", "-B",
                           f"--connect-timeout={int(timeout)}", "-e", query, "test", timeout=timeout + 5)
        return result.stdout.strip()

    # -- setting up and taking down ---------------------------------------------------------------------

    def _register_node(self) -> None:
        """A Node object with this node's address: kube-proxy waits 30 s for one before it starts proxying."""
        self.cluster.kubectl("create", "-f", "-", input=(
            f'{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{self.name}"}},'
            f' "spec": {{"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}}}}'))
        self.cluster.kubectl("patch", "node", self.name, "--subresource=status", "--type=merge", "-p",
                             f'{{"status": {{"addresses": [{{"type": "InternalIP", "address": "{self.address}"}}]}}}}')

    def _resolv_conf(self, namespace: str) -> None:
        self.resolv_dir.mkdir(parents=True, exist_ok=True)
        search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
        (self.resolv_dir / "resolv.conf").write_text(f"nameserver 127.0.0.1\nsearch {search}\noptions ndots:5\n")

    def _kubeconfig(self) -> Path:
        path = self.workdir / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: node\n"
            f"clusters: [{{name: test, cluster: {{server: \"{self.cluster.url_from_vms}\","
            f" certificate-authority: \"{self.cluster.ca_file}\"}}}}]\n"
            f"users: [{{name: admin, user: {{token: \"{self.cluster.env['ADMIN_TOKEN']}\"}}}}]\n"
            "contexts: [{name: node, context: {cluster: test, user: admin}}]\n")
        path.chmod(0o600)
        return path

    def _corefile(self, kubeconfig: Path) -> Path:
        path = self.workdir / "Corefile"
        path.write_text(
            ".:53 {\n"
            "    bind 127.0.0.1\n"
            "    errors\n"
            "    ready 127.0.0.1:8181\n"
            f"    kubernetes {CLUSTER_DOMAIN} {{\n"
            f"        kubeconfig {kubeconfig} node\n"
            "    }\n"
            "}\n")
        return path

    def _start(self, name: str, args: list[str]) -> None:
        with (self.workdir / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(["ip", "netns", "exec", self.netns, *args], stdout=log,
                                                    stderr=log, stdin=subprocess.DEVNULL, cwd=self.workdir)

    def _ready(self, url: str) -> bool:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"{name} on {self.name} exited with {proc.returncode}: {log}")
        return self.exec("curl", "-fsS", "-m", "1", url, check=False).returncode == 0

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def destroy(self) -> None:
        for proc in self.processes.values():
            terminate(proc, timeout=10)
        self.cluster.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false", check=False)
        shutil.rmtree(self.resolv_dir, ignore_errors=True)
        sh("ip", "link", "del", self.host_if, check=False)
        del_netns(self.netns)
