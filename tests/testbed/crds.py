"""The service meshes' real CRDs, installed into the test control plane.

Istio's come from the istio.io/api Go module (pinned; fetched once into the normal Go module cache); Linkerd's
ExternalWorkload CRD is data in ../shared/crds beside the repository. Only the CRDs the tests use are applied:
Istio's file holds fifteen, about 1 MB of schema with CEL rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tests.testbed.cluster import ROOT, Cluster

ISTIO_API_VERSION = "v1.32.0"
ISTIO_CRD_FILE = "kubernetes/customresourcedefinitions.gen.yaml"
WORKLOAD_ENTRY_CRD = "workloadentries.networking.istio.io"
EXTERNAL_WORKLOAD_CRD = "externalworkloads.workload.linkerd.io"
SHARED_CRDS = ROOT.parent / "shared" / "crds"
_NAME = re.compile(r"^metadata:\n(?:  .*\n)*?  name: (\S+)$", re.M)


def istio_crds(version: str = ISTIO_API_VERSION) -> Path:
    """Path of Istio's CRD file in the module cache, downloading the module if it is not there yet."""
    with tempfile.TemporaryDirectory() as scratch:  # `go mod download` wants a module to run in
        subprocess.run(["go", "mod", "init", "vmesh-crds"], cwd=scratch, check=True, capture_output=True)
        result = subprocess.run(["go", "mod", "download", "-json", f"istio.io/api@{version}"], cwd=scratch,
                                capture_output=True, text=True, timeout=300, check=False)
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise AssertionError(f"go mod download istio.io/api@{version} failed: {info.get('Error') or result.stderr}")
    path = Path(info["Dir"]) / ISTIO_CRD_FILE
    if not path.is_file():
        raise AssertionError(f"istio.io/api@{version} has no {ISTIO_CRD_FILE}")
    return path


def linkerd_crds() -> Path | None:
    """Linkerd's ExternalWorkload CRD: no reachable registry serves it, so it is data beside the repository,
    when it is there (None otherwise: the tests that need it are skipped)."""
    path = SHARED_CRDS / "linkerd-externalworkloads.yaml"
    return path if path.is_file() else None


def crd_documents(path: Path, names: Iterable[str]) -> str:
    """The CRDs called `names` out of a multi-document YAML file."""
    wanted = set(names)
    docs = [d for d in re.split(r"^---\s*$", path.read_text(), flags=re.M)
            if (m := _NAME.search(d)) and m.group(1) in wanted]
    found = {m.group(1) for d in docs if (m := _NAME.search(d))}
    if found != wanted:
        raise AssertionError(f"{path} lacks {sorted(wanted - found)}")
    return "\n---\n".join(docs)


def install(cluster: Cluster, path: Path, names: Iterable[str]) -> None:
    """Server-side apply (big CRDs exceed the client-side last-applied annotation), then wait until served.

    Established is not enough: for a moment after it the apiserver still answers 503 "storage is
    (re)initializing" for the new resource, so wait until a LIST of each one succeeds.
    """
    names = list(names)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "vmesh-tests", "-f", "-",
                    input=crd_documents(path, names))
    wait_established(cluster, names)
    for name in names:
        wait_served(cluster, name)


def wait_established(cluster: Cluster, names: list[str], timeout: float = 60.0) -> None:
    """Wait until every CRD has the condition Established. Not `kubectl wait --for=condition=Established`: that
    fails at once, instead of waiting, while a CRD just created has no status.conditions yet ("accessor error:
    <nil> is of the type <nil>", which failed CI's istiod tests once)."""

    def established() -> bool:
        result = cluster.kubectl("get", *(f"crd/{n}" for n in names), "-o", "json", check=False)
        if result.returncode != 0:
            return False
        found = json.loads(result.stdout)
        items = found.get("items", [found]) if found.get("kind") == "List" else [found]
        return len(items) == len(names) and all(
            any(c.get("type") == "Established" and c.get("status") == "True"
                for c in (item.get("status") or {}).get("conditions") or [])
            for item in items)

    deadline = time.monotonic() + timeout
    while not established():
        if time.monotonic() > deadline:
            raise AssertionError(f"CRDs not Established after {timeout:.0f} s: {', '.join(names)}")
        time.sleep(0.2)


def wait_served(cluster: Cluster, crd: str, timeout: float = 60.0) -> None:
    """Wait until the apiserver lists the CRD's resource (no event tells when its storage is ready)."""
    deadline = time.monotonic() + timeout
    while True:
        result = cluster.kubectl("get", crd, "--all-namespaces", "-o", "name", check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{crd} is Established but not served after {timeout:.0f} s: {result.stderr.strip()}")
        time.sleep(0.2)


def install_istio_crds(cluster: Cluster) -> None:
    install(cluster, istio_crds(), [WORKLOAD_ENTRY_CRD])


def install_linkerd_crds(cluster: Cluster) -> bool:
    """Install Linkerd's CRD if it is beside the repository; False when it is not."""
    path = linkerd_crds()
    if path is None:
        return False
    install(cluster, path, [EXTERNAL_WORKLOAD_CRD])
    return True
