"""Re-enrolling a running VM as the README says (issue 20): the agent, running as its own user under systemd on a
booted Debian 12, keeps the VM registered throughout and takes the new token.

Before: the bundle's token was root:root 0600 in the tarball, `tar -xzf` as root kept it so, the agent could no
longer read it, its credentials and renewal loops died, it exited and restarted every ~2.5 s, and peers reaped
the VM ~20 s later.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import pytest

from agent.cluster.tokens import parse_claims, utc
from tests.e2e.admin import journal
from tests.e2e.container import chroot
from tests.e2e.test_deb_boot import Lifecycle, lifecycle  # noqa: F401 (the fixture)
from tests.testbed.plugin import kubectl_vmesh

pytestmark = pytest.mark.vm  # cluster: added by tests/conftest.py wherever the fixture is used


def enroll(lc: Lifecycle, out: Path) -> str:
    """`kubectl vmesh enroll <hostname>` into a tarball; returns the token it holds."""
    kubectl_vmesh(lc.cluster, "enroll", lc.release.hostname, "-n", lc.namespace, "--server",
                  lc.cluster.url_from_vms, "--token-lifetime", "2h", "-o", str(out))
    (lc.root / "root" / out.name).write_bytes(out.read_bytes())
    with tarfile.open(out) as tar:
        member = tar.extractfile("token")
        assert member is not None
        return member.read().decode().strip()


@pytest.mark.timeout(600)
def test_reenrolling_a_running_vm_keeps_it_registered_and_takes_the_new_token(lifecycle: Lifecycle,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    lc, c = lifecycle, lifecycle.container
    # First enrollment, as the README's three steps: bundle unpacked, then the package installed.
    enroll(lc, tmp_path / "first.tar.gz")
    (lc.root / "var" / "log" / "journal").mkdir(parents=True, exist_ok=True)
    lc._inbox()
    steps = ("mkdir -p /etc/vmesh-agent && tar -xzf /root/first.tar.gz -C /etc/vmesh-agent && "
             f"cd /root/debs && apt-get install -y -o Dpkg::Options::=--force-confold ./{lc.debs.amd64.name}")
    installed = chroot(lc.root, steps)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    c.boot()
    lc.wait_registered(timeout=60)
    pid = c.unit("MainPID")

    # Re-enrolled while it runs: the new bundle unpacked over the old one, as root, the same way.
    second = enroll(lc, tmp_path / "second.tar.gz")
    c.run("sh", "-c", "tar -xzf /root/second.tar.gz -C /etc/vmesh-agent")
    assert c.run("stat", "-c", "%U:%G %a", "/etc/vmesh-agent/token").stdout.split() == ["root:vmesh-agent", "640"]
    claims = parse_claims(second)
    assert claims is not None

    def status() -> dict[str, object]:
        body = json.loads(c.run("vmesh-agent", "status", "--json").stdout)
        assert isinstance(body, dict)
        return body

    deadline = time.monotonic() + 10
    while status()["credentials"]["expires"] != utc(claims.expires_at):  # type: ignore[index]
        assert time.monotonic() < deadline, f"the new token not taken: {status()['credentials']}"
        time.sleep(0.2)
    assert c.unit("MainPID") == pid and c.unit("NRestarts") == "0" and c.unit("ActiveState") == "active"
    assert lc.address in lc.endpoints()

    # A token put there otherwise, root's and 0600 (what the old bundle gave): the agent cannot read it, keeps
    # the one it has, stays up and registered, and says what to do.
    c.run("sh", "-c", "cp /etc/vmesh-agent/token /root/t && install -m 0600 -o root -g root /root/t "
                      "/etc/vmesh-agent/token")
    deadline = time.monotonic() + 10
    while "cannot read the new token in /etc/vmesh-agent/token" not in (problem := str(
            status()["credentials"]["problem"])):  # type: ignore[index]
        assert time.monotonic() < deadline, f"not said: {problem}\n{journal(lc.root)}"
        time.sleep(0.2)
    time.sleep(3)  # several heartbeats and credential checks with the token it kept
    assert c.unit("MainPID") == pid and c.unit("NRestarts") == "0" and c.unit("ActiveState") == "active"
    assert lc.address in lc.endpoints()
    assert "chgrp vmesh-agent /etc/vmesh-agent/token && chmod 0640" in journal(lc.root)
