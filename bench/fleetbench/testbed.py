"""The bench's test bed: its control plane, the network namespace the fleet lives in, the listener there and
the Kubernetes namespaces; what it makes, it removes. The VMs' identities and the policies: identities.py."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import cpu_seconds, raise_nofile

from agent.lease.identity import process_alive
from tests.testbed.cluster import RBAC, TESTCLUSTER
from tests.testbed.vm import BRIDGE
from tests.testbed.vm import PREFIX_LEN as BRIDGE_PREFIX_LEN

from .admin import Admin
from .constants import NETNS_ADDRESS, VM_NET
from .errors import SetupError, _log
from .identities import Identities
from .paths import SCRIPT
from .processes import sh
from .vms import vm_address


# Not tests.testbed.cluster.Cluster: its own state dir (the outages stop its parts) and SetupError (exit 2).
class Testbed(Identities):
    """Everything the bench starts and must remove: the control plane (unless it was running or is kept),
    the network namespace with its veth, the listener, the Kubernetes namespaces and the work directory."""

    def __init__(self, cluster_dir: str, keep_cluster: bool) -> None:
        self.cluster_dir = cluster_dir
        self.keep_cluster = keep_cluster
        self.owns_cluster = False
        self.made_bridge = False
        self.env: dict[str, str] = {}
        self.netns = f"vmesh-fleet-{os.getpid()}"
        self.host_if = f"vfl{os.getpid()}"[:15]
        self.netns_address = NETNS_ADDRESS.format(os.getpid() % 254 + 1)
        self.workdir = Path(tempfile.mkdtemp(prefix="vmesh-fleet-"))
        self.namespaces: list[str] = []
        self.listener: subprocess.Popen[bytes] | None = None
        self.admin: Admin | None = None
        self.stopped: set[str] = set()  # components an outage phase stopped and has not started yet

    # The control plane -------------------------------------------------------------------------------

    def _cluster_env(self) -> dict[str, str]:
        out = sh(str(TESTCLUSTER), "env", env=self._env()).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def _env(self) -> dict[str, str]:
        return dict(os.environ, VMESH_TESTCLUSTER_DIR=self.cluster_dir)

    def _running(self) -> bool:
        pids = [Path(self.cluster_dir, f"{name}.pid")
                for name in ("etcd", "kube-apiserver", "kube-controller-manager")]
        return all(p.exists() and process_alive(int(p.read_text().strip() or 0)) for p in pids)

    def testcluster(self, *args: str) -> None:
        sh(str(TESTCLUSTER), *args, env=self._env(), timeout=300)

    def stop(self, component: str) -> None:
        """Stop etcd or kube-apiserver for an outage; down() starts it again if start() was never reached."""
        self.stopped.add(component)
        self.testcluster("stop", component)

    def start(self, component: str) -> None:
        self.testcluster("start", component)
        self.stopped.discard(component)

    def pid_of(self, component: str) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path(self.cluster_dir, f"{component}.pid").read_text().strip())
            return pid if process_alive(pid) else None
        return None

    @property
    def api_port(self) -> int:
        return int(self.env["APISERVER_PORT"])

    @property
    def gateway(self) -> str:
        return self.env["GATEWAY"]

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return sh(f"{self.env['BIN']}/kubectl", "--kubeconfig", self.env["KUBECONFIG"], *args,
                  input=input).stdout

    # Set-up and tear-down ----------------------------------------------------------------------------

    def up(self) -> None:
        raise_nofile(1 << 16)  # the control plane inherits it: ~5 connections per agent end at the apiserver
        self.owns_cluster = not self._running()
        _log(f"control plane in {self.cluster_dir} "
             f"({'starting' if self.owns_cluster else 'already running'})")
        self.testcluster("up")
        self.env = self._cluster_env()
        if self.owns_cluster:
            self._settle_apiserver()
        self.admin = Admin(self.env["APISERVER_URL"], self.env["ADMIN_TOKEN"], self.env["CA_FILE"])
        self._netns_up()
        self._listener_up()
        self._self_check()

    def _settle_apiserver(self, busy: float = 0.25, limit: float = 90.0) -> None:
        """A just-started kube-apiserver spends its first tens of seconds of CPU on itself (OpenAPI, caches):
        spawn only once it is mostly idle, so that the spawn figure is the agents', as on a running
        cluster."""
        pid = self.pid_of("kube-apiserver")
        if pid is None:
            return
        started = time.monotonic()
        while time.monotonic() - started < limit:
            before = cpu_seconds(pid)
            time.sleep(2.0)
            if (cpu_seconds(pid) - before) / 2.0 < busy:
                break
        _log(f"apiserver settled {time.monotonic() - started:.0f}s after start")

    # Not tests.testbed.vm.add_netns: SetupError, made_bridge for down(), no /etc/netns, the VMs' local route.
    def _netns_up(self) -> None:
        if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
            self.made_bridge = True
        if self.gateway not in sh("ip", "-o", "addr", "show", "dev", BRIDGE).stdout:
            sh("ip", "addr", "add", f"{self.gateway}/{BRIDGE_PREFIX_LEN}", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "link", "set", self.host_if, "master", BRIDGE, "up")
        ip = ("ip", "-n", self.netns)
        sh(*ip, "addr", "add", f"{self.netns_address}/{BRIDGE_PREFIX_LEN}", "dev", "eth0")
        sh(*ip, "link", "set", "eth0", "up")
        sh(*ip, "link", "set", "lo", "up")
        sh(*ip, "route", "add", "default", "via", self.gateway)
        sh(*ip, "route", "add", "local", VM_NET, "dev", "lo")  # every VM address is this namespace's own

    def _listener_up(self) -> None:
        log = (self.workdir / "listener.log").open("wb")
        self.listener = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, str(SCRIPT), "--listener"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        assert self.listener.stdout is not None
        if self.listener.stdout.readline().strip() != b"listening":
            raise SetupError(f"listener did not start: {(self.workdir / 'listener.log').read_text()[-1000:]}")

    def _self_check(self) -> None:
        """From inside the namespace: a VM address reaches the listener, the gateway reaches the apiserver."""
        probe = ("import socket,sys\n"
                 "for host, port in ((sys.argv[1], 3306), (sys.argv[2], int(sys.argv[3]))):\n"
                 "    socket.create_connection((host, port), 3).close()\n")
        sh("ip", "netns", "exec", self.netns, sys.executable, "-c", probe, vm_address(0), self.gateway,
           str(self.api_port))

    def new_namespace(self, prefix: str) -> tuple[str, Path]:
        """A fresh namespace with the shipped ServiceAccount, Role and RoleBinding, and a minted token."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        self.namespaces.append(name)
        text = re.sub(r"^(\s*)(namespace|name): vm$", rf"\1\2: {name}", RBAC.read_text(), flags=re.M)
        self.kubectl("apply", "-f", "-", input="\n---\n".join(d for d in text.split("\n---\n")
                                                               if "kind: Namespace" not in d))
        token = self.kubectl("create", "token", "vmesh-agent", "-n", name, "--duration", "2h").strip()
        token_file = self.workdir / f"token-{name}"
        token_file.write_text(token)
        token_file.chmod(0o600)
        return name, token_file

    def restore(self) -> None:
        """After an interrupted outage: start what it stopped (etcd before kube-apiserver)."""
        for component in sorted(self.stopped):
            sh(str(TESTCLUSTER), "start", component, env=self._env(), check=False, timeout=300)
            self.stopped.discard(component)

    def down(self) -> None:
        self.restore()
        for name in self.namespaces:
            with contextlib.suppress(SetupError, subprocess.TimeoutExpired, KeyError):
                self.kubectl("delete", "namespace", name, "--wait=false")
        if self.listener is not None and self.listener.poll() is None:
            self.listener.kill()
            self.listener.wait()
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
        keep = self.keep_cluster or not self.owns_cluster
        if not keep:
            sh(str(TESTCLUSTER), "down", env=self._env(), check=False)
            with contextlib.suppress(OSError):
                if self.made_bridge and not os.listdir(f"/sys/class/net/{BRIDGE}/brif"):
                    sh("ip", "link", "del", BRIDGE, check=False)
        else:
            _log(f"control plane kept: VMESH_TESTCLUSTER_DIR={self.cluster_dir} "
                 "tests/cluster/testcluster down")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Testbed:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
