"""Simulated VMs: a network namespace per VM, its eth0 a veth bridged to the host, its own MariaDB and agent.

All VMs share the bridge vmesh-br0 (the host side holds the gateway address the control plane is reached
at), like VMs on one LAN. Every address used lives inside 198.18.0.0/15, the benchmarking range, and only
inside namespaces and links the tests create.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.testbed.cluster import Cluster
from tests.testbed.mariadb import MariaDB
from tests.testbed.waiting import wait_until

BRIDGE = "vmesh-br0"
PREFIX_LEN = 16
ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "agent"]

_hosts = itertools.count(random.randrange(10, 200) * 256)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result


def ensure_bridge(gateway: str) -> None:
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    if gateway not in sh("ip", "-o", "addr", "show", "dev", BRIDGE).stdout:
        sh("ip", "addr", "add", f"{gateway}/{PREFIX_LEN}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


NETNS_ETC = Path("/etc/netns")


def add_netns(netns: str, host_if: str, address: str, gateway: str, *, hostname: str = "",
              sources: str = "files") -> None:
    """A network namespace whose eth0 (a veth, the other end `host_if` on the bridge) has `address`, routed
    through the gateway, and whose name resolution gives definite answers, as a VM's does.

    `ip netns exec` bind-mounts /etc/netns/<netns>/* over /etc: the namespace's hosts file names its own
    address (`hostname`, default the namespace's name) and localhost, and nsswitch.conf asks that file only.
    Without them the namespace would use the host's resolver, which has no DNS here: every reverse lookup
    would fail transiently, and MariaDB never counts a client whose name lookup failed that way in its host
    cache (a real VM's DNS answers: a name or a definite "no such name"). `sources`: nsswitch's hosts line
    (the node adds "dns", its CoreDNS)."""
    ensure_bridge(gateway)
    etc = NETNS_ETC / netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                               f"{address}\t{hostname or netns}\n")
    (etc / "nsswitch.conf").write_text(f"hosts: {sources}\n")
    sh("ip", "netns", "add", netns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
    sh("ip", "link", "set", host_if, "master", BRIDGE, "up")
    for args in (("addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0"), ("link", "set", "eth0", "up"),
                 ("link", "set", "lo", "up"), ("route", "add", "default", "via", gateway)):
        sh("ip", "-n", netns, *args)


def del_netns(netns: str) -> None:
    sh("ip", "netns", "del", netns, check=False)
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def next_address() -> str:
    """A fresh address, 198.18.1.1 upwards (the gateway's 198.18.0.x skipped), never one handed out before in
    this process: two VMs on one address fight over ARP and lose packets."""
    n = next(_hosts) % (254 * 256) + 256
    while n % 256 in (0, 255):
        n = next(_hosts) % (254 * 256) + 256
    return f"198.18.{n // 256}.{n % 256}"


def _toml(value: Any) -> str:
    """A TOML value: JSON's scalars and arrays are TOML too; tables become inline tables."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


class VM:
    """One simulated VM. Use as a context manager, or call destroy()."""

    def __init__(self, name: str, workdir: Path, cluster: Cluster) -> None:
        self.name = name
        self.netns = f"vmesh-{name}"
        self.host_if = f"vh{os.getpid() % 1000}{name[-8:]}"[:15]
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.address = next_address()
        self.mariadb: MariaDB | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = self.workdir / "agent.log"
        add_netns(self.netns, self.host_if, self.address, cluster.env["GATEWAY"], hostname=name)

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.netns, *args).stdout

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.netns, *args, check=check)

    def hostname_i(self) -> list[str]:
        return self.exec("hostname", "-I").stdout.split()

    def discover(self, config: Path | None = None) -> tuple[int, dict[str, Any]]:
        """`vmesh-agent discover --json` run inside the VM: (exit code, report)."""
        args = [*AGENT, "discover", "--json"] + (["--config", str(config)] if config else [])
        result = self.exec(*args, check=False)
        if result.returncode not in (0, 3):
            raise AssertionError(f"discover failed ({result.returncode}): {result.stderr}")
        report: dict[str, Any] = json.loads(result.stdout)
        return result.returncode, report

    def start_mariadb(self, template: Path, bind: str = "0.0.0.0", port: int = 3306,
                      performance_schema: bool = False) -> MariaDB:
        datadir = self.workdir / "mysql"
        if not datadir.exists():
            shutil.copytree(template, datadir)
        self.mariadb = MariaDB(datadir, self.netns, port=port, bind=bind, performance_schema=performance_schema)
        self.mariadb.start()
        return self.mariadb

    def write_config(self, namespace: str, token: str = "", vm_name: str = "", backend: str = "",
                     **overrides: dict[str, Any]) -> Path:
        """The agent's config for this VM: fast test intervals; `overrides` merge into its tables,
        e.g. write_config(ns, discovery={"remove_after": "3s"}). `vm_name` defaults to the VM's name
        (another VM's: a clone); `backend` to the agent's default; `token` to one of the VM's own identity
        (ServiceAccount vmesh-vm-<vm_name>, enrolled if need be), under the isolation policy."""
        token = token or self.cluster.token(namespace, vm=vm_name or self.name)
        token_file = self.workdir / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        tables: dict[str, dict[str, Any]] = {
            "cluster": {"server": self.cluster.url_from_vms, "ca_file": self.cluster.ca_file,
                        "token_file": str(token_file)},
            "discovery": {"interval": "1s"},
            "heartbeat": {"interval": "1s", "lease_duration": "5s"},
            "sync": {"resync_interval": "2s"},
            "api": {"socket": str(self.workdir / "agent.sock")},
            "log": {"format": "json", "level": "debug"},
        }
        for table, values in overrides.items():
            tables.setdefault(table, {}).update(values)
        lines = [f'vm_name = "{vm_name or self.name}"', f'namespace = "{namespace}"',
                 f'state_dir = "{self.workdir / "state"}"', *([f'backend = "{backend}"'] if backend else [])]
        for table, values in tables.items():
            lines += ["", f"[{table}]", *(f"{key} = {_toml(value)}" for key, value in values.items())]
        config = self.workdir / "config.toml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def write_kubeconfig(self, token_file: Path) -> Path:
        """A kubeconfig for this VM's agent (`cluster.kubeconfig`): the cluster as VMs reach it, its CA, and a user
        whose token is read from `token_file` (the kubeconfig loader's path, beside server/ca_file/token_file)."""
        path = self.workdir / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "vm",
            "clusters": [{"name": "test", "cluster": {"server": self.cluster.url_from_vms,
                                                      "certificate-authority": self.cluster.ca_file}}],
            "users": [{"name": "vm", "user": {"tokenFile": str(token_file)}}],
            "contexts": [{"name": "vm", "context": {"cluster": "test", "user": "vm"}}],
        }))
        return path

    def start_agent(self, config: Path, env: dict[str, str] | None = None,
                    tree: Path = ROOT, boot_id: str = "", args: tuple[str, ...] = (),
                    *, wrap: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """Run the agent from `tree` (this checkout, or another release's) inside the VM, with `args` after
        `run --config CONFIG`. With `boot_id`, the agent sees that as /proc/sys/kernel/random/boot_id (a mount
        namespace of its own): a VM booted apart from the host, as a clone of a VM image is. `wrap` goes before
        the agent's command inside the VM: tests.testbed.clock.skewed_clock("+50m"), a VM whose clock is off."""
        log = self.agent_log.open("ab")
        env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
        command = [*wrap, *AGENT, "run", "--config", str(config), *args]
        if boot_id:
            fake = self.workdir / "boot_id"
            fake.write_text(boot_id + "\n")
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"', str(fake), *command]
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *command],
            stdout=log, stderr=log, env=env, cwd=tree,
        )
        log.close()
        return self.agent

    def stop_agent(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.agent is not None
        self.agent.send_signal(sig)
        code = self.agent.wait(timeout=timeout)
        self.agent = None
        return code

    def blackhole(self, address: str) -> None:
        """Drop every packet this VM sends to `address` (nftables, inside the VM's namespace): no reset, no ICMP,
        as a partition or a dead route looks, unlike a refused connection."""
        self.exec("nft", "add table inet vmesh_blackhole")
        self.exec("nft", "add chain inet vmesh_blackhole out { type filter hook output priority 0; policy accept; }")
        self.exec("nft", f"add rule inet vmesh_blackhole out ip daddr {address} drop")

    def lift_blackhole(self) -> None:
        self.exec("nft", "delete table inet vmesh_blackhole", check=False)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`vmesh-agent ARGS` inside the VM, against this VM's config (and so its socket)."""
        return self.exec(*AGENT, *args, "--config", str(self.workdir / "config.toml"), check=check)

    def log_lines(self) -> list[dict[str, Any]]:
        if not self.agent_log.exists():
            return []
        lines = []
        for raw in self.agent_log.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": raw})
        return lines

    def wait_log(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((line for line in self.log_lines() if predicate(line)), None)

        found: dict[str, Any] = wait_until(find, timeout, f"{self.name} log: {what}")
        return found

    def destroy(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait()
        if self.mariadb is not None:
            self.mariadb.stop()
        sh("ip", "link", "del", self.host_if, check=False)
        del_netns(self.netns)
