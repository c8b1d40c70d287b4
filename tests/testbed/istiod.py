"""istiod (pilot-discovery) out of cluster against the test apiserver: does Istio read what the agent writes?

Built from the Go module proxy by tests/cluster/build-istiod; the CRDs installed are those of the istio.io/api
version its go.mod requires. Every listener is on 127.0.0.1 (free ports), webhooks are off, and it reads the
cluster with the admin kubeconfig. Its own registry is read from its debug endpoints: /debug/registryz (the
services it knows) and /debug/endpointShardz (their endpoints, with health).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.testbed.cluster import ROOT, Cluster
from tests.testbed.crds import install, istio_crds
from tests.testbed.waiting import terminate, wait_until

BUILD_ISTIOD = ROOT / "tests" / "cluster" / "build-istiod"
_CRD_NAME = re.compile(r"^metadata:\n(?:  .*\n)*?  name: (\S+)$", re.M)
NAMESPACE = "istio-system"


def istiod_binary() -> tuple[Path, str]:
    """pilot-discovery, built once and cached, and the istio.io/api version it was built with."""
    result = subprocess.run([str(BUILD_ISTIOD)], capture_output=True, text=True, timeout=3600, check=False)
    if result.returncode != 0:
        raise AssertionError(f"tests/cluster/build-istiod failed: {result.stderr.strip()[-2000:]}")
    directory = Path(result.stdout.strip().splitlines()[-1])
    return directory / "pilot-discovery", (directory / "api").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Istiod:
    """One istiod. Use as a context manager, or call stop()."""

    def __init__(self, workdir: Path, cluster: Cluster) -> None:
        binary, api_version = istiod_binary()
        crds = istio_crds(api_version)
        install(cluster, crds, sorted(set(_CRD_NAME.findall(crds.read_text()))))
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        self.workdir = workdir / "istiod"
        self.workdir.mkdir(parents=True, exist_ok=True)
        mesh = self.workdir / "mesh.yaml"
        mesh.write_text("trustDomain: cluster.local\n")
        self.http = _free_port()
        ports = {name: f"127.0.0.1:{_free_port()}" for name in ("httpsAddr", "grpcAddr", "secureGRPCAddr",
                                                                 "monitoringAddr")}
        env = {**os.environ, "POD_NAMESPACE": NAMESPACE, "POD_NAME": "istiod-vmesh-test", "REVISION": "default",
               "INJECTION_WEBHOOK_CONFIG_NAME": "", "VALIDATION_WEBHOOK_CONFIG_NAME": "",
               "PILOT_ENABLE_GATEWAY_API": "false", "PILOT_ENABLE_GATEWAY_API_STATUS": "false",
               "PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER": "false", "KUBECONFIG": cluster.kubeconfig}
        self.log_path = self.workdir / "istiod.log"
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(binary), "discovery", "--kubeconfig", cluster.kubeconfig, "--registries", "Kubernetes",
                 "--clusterID", "Kubernetes", "--namespace", NAMESPACE, "--meshConfig", str(mesh),
                 "--httpAddr", f"127.0.0.1:{self.http}", *(f"--{k}={v}" for k, v in ports.items()),
                 "--ctrlz_port", "0"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        try:
            wait_until(self._ready, 120, "istiod ready")
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Istiod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        if self._proc.poll() is not None:
            raise AssertionError(f"istiod exited with {self._proc.returncode}: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def debug(self, what: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/debug/{what}", timeout=10) as response:
            return json.loads(response.read())

    def service(self, hostname: str) -> dict[str, Any] | None:
        """istiod's own record of the service called `hostname`, from /debug/registryz."""
        return next((s for s in self.debug("registryz") or [] if s.get("hostname") == hostname), None)

    def endpoints(self, hostname: str, namespace: str) -> list[dict[str, Any]]:
        """The endpoints istiod holds for `hostname`, every shard's, from /debug/endpointShardz."""
        shards = (self.debug("endpointShardz") or {}).get(hostname, {}).get(namespace, {})
        found: list[dict[str, Any]] = []
        for shard in (shards.get("Shards") or {}).values():
            found += shard or []
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self._proc)
