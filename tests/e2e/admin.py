"""What a VM admin does to an installed deb, and what the tests read back: shared by the e2e tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.container import chroot
from tests.testbed.cluster import Cluster

UNIT = "vmesh-agent.service"


def point_config_at_cluster(root: Path, cluster: Cluster, namespace: str, allow: str = "") -> str:
    """Edit the shipped conffile as the README tells an admin to; returns the new text. `allow`: the
    discovery.allow table's entries, when not the shipped `mysql = "mysqldb"`."""
    etc = root / "etc" / "vmesh-agent"
    (etc / "token").write_text(cluster.token(namespace, shared=True))  # vm_name is the hostname: legacy account
    (etc / "ca.crt").write_bytes(Path(cluster.ca_file).read_bytes())
    result = chroot(root, "chown root:vmesh-agent /etc/vmesh-agent/token && chmod 0640 /etc/vmesh-agent/token")
    assert result.returncode == 0, result.stderr
    config = (etc / "config.toml").read_text()
    edits = {"namespace": namespace, "server": cluster.url_from_vms, "ca_file": "/etc/vmesh-agent/ca.crt",
             "token_file": "/etc/vmesh-agent/token"}
    for key, value in edits.items():
        config, count = re.subn(rf'^{key} = "[^"]*"', f'{key} = "{value}"', config, count=1, flags=re.M)
        assert count == 1, f"config.example.toml has no {key} line"
    if allow:
        config, count = re.subn(r"^allow = \{[^}]*\}", f"allow = {{ {allow} }}", config, count=1, flags=re.M)
        assert count == 1, "config.example.toml has no discovery allow line"
    (etc / "config.toml").write_text(config)
    return config


def endpoints(cluster: Cluster, namespace: str, service: str = "mysqldb") -> list[str]:
    slices = cluster.list("endpointslices", namespace, selector=f"kubernetes.io/service-name={service}")
    return [address for s in slices for e in s.get("endpoints") or [] for address in e["addresses"]]


def journal(root: Path, *, boot: str = "", unit_only: bool = True) -> str:
    """The container's persistent journal, read from the host (diagnostics and log assertions)."""
    args = ["journalctl", "-D", str(root / "var" / "log" / "journal"), "--no-pager", "-o", "cat"]
    if unit_only:
        args += ["-u", UNIT]
    if boot:
        args += ["-b", boot]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    return result.stdout[-20000:] + result.stderr[-2000:]

