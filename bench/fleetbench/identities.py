"""Who the fleet's VMs are to the apiserver: enrolled as `kubectl vmesh enroll` does it, one plain
ServiceAccount each, or (Testbed.new_namespace's token) the shared account; and the admission policies on or
off."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.testbed.cluster import POLICY
from tests.testbed.cluster import ROOT as REPO

from .admin import Admin
from .constants import POLICIES, SERVICE, TOKEN_LIFETIME_S
from .errors import _log
from .vms import vm_address, vm_name


class Identities:
    """Testbed's part that writes identities and policies (a mixin: Testbed has the admin and kubectl)."""

    admin: Admin | None
    env: dict[str, str]

    def kubectl(self, *args: str, input: str | None = None) -> str:
        raise NotImplementedError  # Testbed.kubectl

    def per_vm_identities(self, namespace: str, vms: int, directory: Path) -> str:
        """One ServiceAccount per VM (`vmesh-fleet-<i>`, as DESIGN.md's identity model has it) bound to the
        shipped Role through the namespace's ServiceAccount group, and a minted token for each in
        `directory`; returns the token_file template (`${index}` is filled per VM by the worker).

        The identity matters to the apiserver, not only to security: API Priority and Fairness queues
        requests per user, so a thousand agents sharing one account share one flow's handful of queues
        (and get 429s at boot) where a thousand accounts are spread over all of the priority level's queues.
        """
        started = time.monotonic()
        accounts = [{"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": f"vmesh-{vm_name(i)}"}} for i in range(vms)]
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "vmesh-agent-per-vm"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                               "name": "vmesh-agent"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                 "name": f"system:serviceaccounts:{namespace}"}]}
        self.kubectl("create", "-n", namespace, "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [*accounts, binding]}))
        path = self._mint_all(namespace, vms, directory, "vmesh-{}")
        _log(f"{vms} ServiceAccounts and tokens in {time.monotonic() - started:.1f} s")
        return path

    def enrolled_identities(self, namespace: str, vms: int, directory: Path) -> str:
        """Each VM enrolled as `kubectl vmesh enroll` enrolls it: its ServiceAccount vmesh-vm-fleet-<i>, which
        records its enrollment (its address /32, the service mysqldb, a 2 h token lifetime), and its own
        RoleBinding, both from the plugin's identity_objects(); a token minted for each. The enrollment policy
        is written once for all of them by policies() (enroll writes it once per VM)."""
        sys.path.insert(0, str(REPO))
        from agent.plugin import enrollment  # noqa: PLC0415 (the parent's own checkout, not --agent-tree)
        from agent.plugin.cli import identity_objects  # noqa: PLC0415

        started = time.monotonic()
        items: list[dict[str, Any]] = []
        for i in range(vms):
            notes = enrollment.account_annotations((f"{vm_address(i)}/32",), (SERVICE,), TOKEN_LIFETIME_S)
            items += identity_objects(vm_name(i), namespace, notes)
        self.kubectl("create", "-n", namespace, "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        path = self._mint_all(namespace, vms, directory, "vmesh-vm-{}")
        _log(f"{vms} VMs enrolled (ServiceAccount, RoleBinding, token) in {time.monotonic() - started:.1f} s")
        return path

    def _mint_all(self, namespace: str, vms: int, directory: Path, account: str) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        assert self.admin is not None
        admin = self.admin

        def mint(index: int) -> None:
            path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account.format(vm_name(index))}/token"
            answer = admin.post(path, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                       "spec": {"expirationSeconds": TOKEN_LIFETIME_S}})
            token_file = directory / f"token-{index}"
            token_file.write_text(answer["status"]["token"])
            token_file.chmod(0o600)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(mint, range(vms)))
        return str(directory / "token-${index}")

    def policies(self, on: bool, namespace: str) -> float:
        """The admission policies on (policy.yaml, and vmesh-vm-enrollment written from every enrolled
        account, as `kubectl vmesh install` does) or off; returns once the apiserver enforces it, in
        seconds."""
        sys.path.insert(0, str(REPO))
        from agent.cluster.errors import Forbidden  # noqa: PLC0415
        from agent.cluster.kube import KubeClient  # noqa: PLC0415
        from agent.cluster.resources import ENDPOINT_SLICES  # noqa: PLC0415
        from agent.config import ClusterSettings  # noqa: PLC0415
        from agent.plugin import enforce, enrollment  # noqa: PLC0415

        started = time.monotonic()
        if not on:
            for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
                self.kubectl("delete", kind, *POLICIES, "--ignore-not-found")

        async def settle() -> None:
            kube = await KubeClient.connect(ClusterSettings(kubeconfig=self.env["KUBECONFIG"]))
            try:
                if on:
                    await enforce.wait_enforced(kube, namespace, POLICIES[0])
                    revision = await enforce.publish(kube, namespace, "vmesh-agent")
                    await enforce.wait_enforced(kube, namespace, enrollment.POLICY, revision)
                    return
                while True:  # off: until every apiserver admits the marker again
                    try:
                        await kube.create(ENDPOINT_SLICES, namespace, enforce.marker(POLICIES[0]),
                                          dry_run=True)
                        return
                    except Forbidden:
                        await asyncio.sleep(0.2)
            finally:
                await kube.close()

        if on:
            self.kubectl("apply", "-f", str(POLICY))
        asyncio.run(asyncio.wait_for(settle(), 120))
        _log(f"admission policies {'on' if on else 'off'} in {time.monotonic() - started:.1f} s")
        return time.monotonic() - started
