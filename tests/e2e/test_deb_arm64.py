"""The arm64 deb on an arm64 Debian 13, run on this amd64 machine under Debian's qemu-user-static (binfmt_misc):
installed by apt with no network, its agent registers the VM's HTTP server against the test cluster and
deregisters on SIGTERM (no MariaDB under emulation: tests/e2e/debian_root.py says why).

Not booted: systemd 257 as PID 1 under Debian 12's qemu-user 7.2 started no unit and wrote nothing to the
console in 90 s (it sat waiting, its systemd-executor never spawned), so the daemon runs in the chroot as the
unit would run it: as the vmesh-agent user, in the VM's network namespace, with the VM's hostname (its own UTS
namespace), the VM's /proc and the unit's runtime and state directories.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.admin import endpoints, point_config_at_cluster
from tests.e2e.conftest import Debs
from tests.e2e.container import PATH, chroot
from tests.e2e.debian_root import TRIXIE_ARM64, copy_root
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

pytestmark = pytest.mark.vm  # cluster: added by tests/conftest.py wherever the fixture is used

SERVICE = "web"


@pytest.fixture
def vm(cluster: Cluster, tmp_path: Path) -> Iterator[VM]:
    machine = VM(f"arm-{uuid.uuid4().hex[:4]}", tmp_path, cluster)
    yield machine
    machine.destroy()


def _in_vm(vm: VM, root: Path, command: str, log: Path) -> subprocess.Popen[bytes]:
    """`command` in `root` as a process of the VM: its network namespace, its hostname, its /proc (a private mount
    namespace), the same PID throughout (exec), so a signal reaches the command itself."""
    script = (f"mount -t proc proc {root}/proc && hostname {TRIXIE_ARM64.hostname} && "
              f"exec chroot {root} env -i PATH={PATH} LC_ALL=C.UTF-8 {command}")
    with log.open("ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", vm.netns, "unshare", "--uts", "--mount", "sh", "-c", script],
                                stdout=out, stderr=out)


@pytest.mark.timeout(1800)
def test_arm64_deb_installs_and_registers_under_emulation(
    cluster: Cluster, namespace: str, *, debs: Debs, vm: VM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures: list[str] = []
    root = copy_root(tmp_path / "root", TRIXIE_ARM64)
    (root / "root" / "debs").mkdir()
    (root / "root" / "debs" / debs.arm64.name).write_bytes(debs.arm64.read_bytes())
    started = time.monotonic()
    installed = chroot(root, f"cd /root/debs && apt-get install -y ./{debs.arm64.name}", timeout=1200)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    figures.append(f"apt-get install ./{debs.arm64.name} (emulated, no network): {time.monotonic() - started:.1f} s")
    assert chroot(root, "uname -m").stdout.strip() == "aarch64"
    version = json.loads(chroot(root, "vmesh-agent version --json").stdout)["python"]
    assert version["version"].startswith("3.13.") and version["abi"] == ".cpython-313-aarch64-linux-gnu.so"
    assert version["compiled_failed"] == {} and len(version["compiled_loaded"]) == 8, version
    pyc = chroot(root, "find /usr/lib/vmesh-agent -name '*.cpython-313.pyc' | wc -l").stdout.strip()
    assert int(pyc) > 500, pyc  # the postinst compiled with the root's own (emulated) python3.13

    point_config_at_cluster(root, cluster, namespace, allow=f'http = "{SERVICE}"')
    # What systemd would have done: a machine id (first boot), the unit's RuntimeDirectory and StateDirectory.
    (root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
    setup = chroot(root, "install -d -o vmesh-agent -g vmesh-agent /run/vmesh-agent /var/lib/vmesh-agent "
                         "&& mkdir -p /srv && echo 'the arm64 VM' > /srv/index.html")
    assert setup.returncode == 0, setup.stderr
    web = _in_vm(vm, root, "python3 -m http.server 8080 --directory /srv", tmp_path / "web.log")
    booted = time.monotonic()
    agent = _in_vm(vm, root, "setpriv --reuid=vmesh-agent --regid=vmesh-agent --init-groups "
                             "/usr/bin/vmesh-agent run --config /etc/vmesh-agent/config.toml", tmp_path / "agent.log")
    try:
        def registered() -> bool:
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited {agent.returncode}: {(tmp_path / 'agent.log').read_text()}")
            return vm.address in endpoints(cluster, namespace, SERVICE)

        wait_until(registered, 300, f"{SERVICE} registered at {vm.address}", interval=0.5)
        figures.append(f"agent start to registered (emulated aarch64 python3.13): {time.monotonic() - booted:.1f} s")
        stopped = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
        assert vm.address not in endpoints(cluster, namespace, SERVICE), "SIGTERM left the endpoint behind"
        figures.append(f"SIGTERM to deregistered and exited (emulated): {time.monotonic() - stopped:.1f} s")
    finally:
        for process in (agent, web):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        with capsys.disabled():
            print("\n" + "\n".join(f"[e2e] arm64: {line}" for line in figures))
