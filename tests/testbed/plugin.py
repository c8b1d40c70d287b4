"""`kubectl vmesh` as a test or the demo runs it, and an enrolled bundle put where a simulated VM reads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.testbed.cluster import ROOT, Cluster
from tests.testbed.vm import VM

CONFIG_DIR = "/etc/vmesh-agent/"


def kubectl_vmesh(cluster: Cluster, *args: str, cwd: Path | None = None,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    """`kubectl vmesh ARGS` from this checkout, as kubectl runs a plugin: its own process, the kubeconfig given
    by kubectl's own flag (not the environment)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    result = subprocess.run([sys.executable, "-m", "agent.plugin", *args, "--kubeconfig", cluster.kubeconfig],
                            capture_output=True, text=True, timeout=60, cwd=cwd or ROOT, check=False,
                            env={**env, "PYTHONPATH": str(ROOT)})
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl vmesh {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def install_bundle(vm: VM, bundle: Path) -> Path:
    """The bundle (a directory or a tarball) copied to the VM's stand-in for /etc/vmesh-agent/; its config changed
    only in the paths a simulated VM has elsewhere (that directory, state_dir, the API socket). Returns the config."""
    etc = vm.workdir / "etc-vmesh-agent"
    etc.mkdir(exist_ok=True)
    if bundle.is_dir():
        for path in bundle.iterdir():
            shutil.copy2(path, etc / path.name)
    else:
        with tarfile.open(bundle) as tar:
            tar.extractall(etc, filter="data")
    config = etc / "config.toml"
    text = config.read_text().replace(CONFIG_DIR, f"{etc}/")
    config.write_text(f'state_dir = "{vm.workdir / "state"}"\n{text}\n[api]\nsocket = "{vm.workdir / "agent.sock"}"\n')
    return config


def untar_bundle(vm: VM, bundle: Path) -> Path:
    """The bundle's tarball unpacked into the VM's stand-in for /etc/vmesh-agent/ as the README says, by GNU tar
    as root (`sudo tar -xzf X.tar.gz -C /etc/vmesh-agent`), over what is there: a first enrollment or a
    re-enrollment. Returns that directory; the agent's config points at its token and ca.crt
    (`VM.write_config(..., cluster=bundle_paths(etc))`)."""
    etc = vm.workdir / "etc-vmesh-agent"
    etc.mkdir(exist_ok=True)
    subprocess.run(["tar", "-xzf", str(bundle), "-C", str(etc)], check=True, capture_output=True, timeout=30)
    return etc


def bundle_paths(etc: Path) -> dict[str, str]:
    """The [cluster] keys of a config that reads the unpacked bundle's token and CA."""
    return {"token_file": str(etc / "token"), "ca_file": str(etc / "ca.crt")}
