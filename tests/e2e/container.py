"""A Debian root booted by systemd-nspawn inside a simulated VM's network namespace.

The container shares the VM's network namespace (its `hostname -I` is the VM's address) and runs its own
systemd as PID 1. The host has no systemd of its own, hence `--register=no --keep-unit` and a tmpfs on
/run/systemd/nspawn; commands run inside through nsenter (no machined, no machinectl).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.debian_root import resolve_definitely
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

NSPAWN_STATE = Path("/run/systemd/nspawn")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _ensure_nspawn_state() -> None:
    NSPAWN_STATE.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(NSPAWN_STATE)], check=False).returncode != 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(NSPAWN_STATE)], check=True)


def chroot(root: Path, command: str, *, network: bool = False,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a shell command in `root` without booting it; with no network unless asked (`unshare -n`)."""
    args = ["chroot", str(root), "sh", "-c", command]
    if not network:
        args = ["unshare", "--net", *args]
    env = {"PATH": PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, check=False)


class Container:
    def __init__(self, root: Path, vm: VM, console_log: Path) -> None:
        self.root = root
        self.vm = vm
        self.console_log = console_log
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.booted_at = 0.0

    def boot(self) -> None:
        """Start the container and return once PID 1 inside is known (not when booting is finished)."""
        _ensure_nspawn_state()
        resolve_definitely(self.root, self.vm.address)
        log = self.console_log.open("ab")
        self.booted_at = time.monotonic()
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet", "--console=passive",
             f"--network-namespace-path=/run/netns/{self.vm.netns}", f"--machine={self.vm.name}",
             "-D", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        self.leader = wait_until(self._find_leader, 30, "the container's PID 1")

    def _find_leader(self) -> int:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.nspawn.returncode}: {self.console()[-3000:]}")
        # The container's init: a descendant of systemd-nspawn that is PID 1 in its own namespace.
        for pid in _descendants(self.nspawn.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                return pid
        return 0

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command inside the booted container (all its namespaces, its root)."""
        cmd = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
               "env", "-i", f"PATH={PATH}", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"in the container: {' '.join(args)} -> {result.returncode}\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def wait_booted(self, timeout: float = 120) -> str:
        """Wait for the boot to finish; returns systemd's verdict (running, or degraded)."""
        def state() -> str:
            out = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            return out if out in ("running", "degraded") else ""

        verdict: str = wait_until(state, timeout, "the container's boot to finish", interval=0.5)
        return verdict

    def unit(self, prop: str, unit: str = "vmesh-agent.service") -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def poweroff(self, timeout: float = 90, verb: str = "poweroff") -> int:
        """`systemctl poweroff` (or `reboot`: systemd-nspawn then exits with 133 instead of booting again) inside;
        returns systemd-nspawn's exit code once the container is gone."""
        assert self.nspawn is not None
        self.run("systemctl", "--no-block", verb, check=False)
        code = self.nspawn.wait(timeout=timeout)
        self.nspawn = None
        return code

    def destroy(self) -> None:
        if self.nspawn is None:
            return
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.leader:
                    os.kill(self.leader, signal.SIGKILL)  # PID 1 of a namespace: takes everything inside along
                self.nspawn.kill()
                self.nspawn.wait(timeout=30)
        self.nspawn = None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
