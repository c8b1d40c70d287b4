"""The test control plane (tests/cluster/testcluster) as seen from a test: kubectl with the admin token."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTCLUSTER = ROOT / "tests" / "cluster" / "testcluster"
RBAC = ROOT / "packaging" / "kubernetes" / "rbac.yaml"
POLICY = ROOT / "packaging" / "kubernetes" / "policy.yaml"
LEGACY_ACCOUNT = "vmesh-agent"  # the shared ServiceAccount of before per-VM identities (rbac.yaml's legacy binding)


@dataclass
class Cluster:
    env: dict[str, str]

    @classmethod
    def up(cls) -> Cluster:
        subprocess.run([str(TESTCLUSTER), "up"], check=True, stdout=subprocess.DEVNULL)
        out = subprocess.run([str(TESTCLUSTER), "env"], check=True, capture_output=True, text=True).stdout
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return cls(env)

    def stop(self, component: str) -> None:
        """Stop etcd, kube-apiserver or kube-controller-manager (outage tests); start() brings it back."""
        subprocess.run([str(TESTCLUSTER), "stop", component], check=True, stderr=subprocess.DEVNULL)

    def start(self, component: str) -> None:
        subprocess.run([str(TESTCLUSTER), "start", component], check=True, stderr=subprocess.DEVNULL)

    @contextmanager
    def paused(self, component: str) -> Iterator[None]:
        """SIGSTOP a component and SIGCONT it on leaving: a server stalled, not gone. Its sockets stay open and
        the kernel still accepts, so requests wait rather than fail, and all go through the moment it resumes."""
        pid = int((Path(self.kubeconfig).parent / f"{component}.pid").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def ca_file(self) -> str:
        return self.env["CA_FILE"]

    @property
    def url_from_vms(self) -> str:
        return self.env["APISERVER_GATEWAY_URL"]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [f"{self.env['BIN']}/kubectl", "--kubeconfig", self.kubeconfig, *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return items

    def create_namespace(self, prefix: str = "vm") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        return name

    def apply_rbac(self, namespace: str, *, bind: bool = True) -> None:
        """The shipped manifests, rbac.yaml moved to `namespace`, and policy.yaml (cluster-scoped, the same for every
        namespace); without `bind`, everything but the legacy RoleBinding."""
        text = re.sub(r"^(\s*)(namespace|name): vm$", rf"\1\2: {namespace}", RBAC.read_text(), flags=re.M)
        docs = [d for d in text.split("\n---\n") if "kind: Namespace" not in d]
        if not bind:
            docs = [d for d in docs if "kind: RoleBinding" not in d]
        self.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
        self.kubectl("apply", "-f", str(POLICY))

    def enroll(self, namespace: str, vm: str, *, bind: bool = True) -> str:
        """The VM's own identity, as `kubectl vmesh enroll` makes it (idempotent): ServiceAccount vmesh-vm-<vm>
        and, with `bind`, its RoleBinding to the shared Role. Returns the account's name."""
        account = f"vmesh-vm-{vm}"
        labels = {"vmesh.dev/vm": vm, "app.kubernetes.io/managed-by": "vmesh-agent"}
        docs: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": account, "namespace": namespace, "labels": labels}}]
        if bind:
            docs.append({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": account, "namespace": namespace, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vmesh-agent"},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        return account

    def bind_vm(self, namespace: str, vm: str) -> None:
        self.enroll(namespace, vm, bind=True)

    def token(self, namespace: str, vm: str = "", *, shared: bool = False, bind: bool = True) -> str:
        """A real bound ServiceAccount token, minted through the TokenRequest API: VM `vm`'s own (its account
        enrolled first, bound unless told), or, with `shared`, the legacy account every VM used to share (the
        `endpoints` backend, migration tests). One of the two must be asked for."""
        if bool(vm) == shared:
            raise ValueError("token(): name the VM (its own identity) or ask for shared=True (the legacy account)")
        account = LEGACY_ACCOUNT if shared else self.enroll(namespace, vm, bind=bind)
        return self.kubectl("create", "token", account, "-n", namespace, "--duration", "1h").stdout.strip()
