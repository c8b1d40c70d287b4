"""`kubectl vmesh` end to end against the test control plane: install, enroll, a VM running on its bundle alone,
get vms, revoke. The plugin runs as kubectl runs it: a separate process, with kubectl's flags."""

from __future__ import annotations

import json
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.plugin import manifests
from tests.testbed.cluster import Cluster
from tests.testbed.plugin import install_bundle, kubectl_vmesh
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

pytestmark = pytest.mark.vm  # cluster: added by tests/conftest.py wherever the fixture is used


@pytest.fixture
def installed(cluster: Cluster) -> Iterator[str]:
    """A namespace of its own, made by `kubectl vmesh install` alone; removed afterwards with the cluster-scoped
    objects the manifests hold for it (the admission policy and its binding, once shipped)."""
    namespace = f"vmp-{uuid.uuid4().hex[:6]}"
    yield namespace
    for doc in manifests.load(namespace):
        if doc["kind"] in manifests.CLUSTER_SCOPED and doc["kind"] != "Namespace":
            resource = manifests.resource_of(doc)
            cluster.kubectl("delete", f"{resource.plural}.{resource.group}".rstrip("."), doc["metadata"]["name"],
                            "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def status_with_token(cluster: Cluster, token: str, path: str) -> int:
    """The HTTP status of GET `path` with `token` as the bearer: not the agent, not kubectl."""
    request = urllib.request.Request(cluster.env["APISERVER_URL"] + path, headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=cluster.ca_file)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_install_applies_the_manifests_and_a_second_run_changes_nothing(cluster: Cluster, installed: str) -> None:
    dry = kubectl_vmesh(cluster, "install", "--dry-run", "-n", installed).stdout
    docs = [d for d in yaml.safe_load_all(dry) if d]
    assert {d["kind"] for d in docs} >= {"Namespace", "ServiceAccount", "Role", "RoleBinding"}
    assert cluster.kubectl("get", "namespace", installed, check=False).returncode != 0, "--dry-run applied something"

    out = kubectl_vmesh(cluster, "install", "-n", installed).stdout.splitlines()
    # It returns once the apiserver enforces both policies (issue 19): the last two lines say so.
    first, enforced = out[:-2], out[-2:]
    assert enforced[0].startswith("validatingadmissionpolicy.admissionregistration.k8s.io/vmesh-vm-isolation "
                                  "enforced ("), out
    assert enforced[1].startswith("validatingadmissionpolicy.admissionregistration.k8s.io/vmesh-vm-enrollment "
                                  "enforced at revision "), out
    assert len(first) == len(docs)
    assert all(line.endswith(" created") for line in first), first
    assert f"namespace/{installed} created" in first
    assert "role.rbac.authorization.k8s.io/vmesh-agent created" in first
    role = cluster.get("role", "vmesh-agent", installed)
    assert role is not None and role["rules"]

    second = kubectl_vmesh(cluster, "install", "-n", installed).stdout.splitlines()[:-2]
    assert second == [line.replace(" created", " unchanged") for line in first]

    # Someone edits the Role by hand: install puts it back and says so.
    cluster.kubectl("patch", "role", "vmesh-agent", "-n", installed, "--type", "json",
                    "-p", '[{"op": "remove", "path": "/rules/0"}]')
    third = kubectl_vmesh(cluster, "install", "-n", installed).stdout.splitlines()
    assert "role.rbac.authorization.k8s.io/vmesh-agent configured" in third
    assert cluster.get("role", "vmesh-agent", installed)["rules"] == role["rules"]  # type: ignore[index]


def get_vms(cluster: Cluster, namespace: str, *flags: str) -> str:
    return kubectl_vmesh(cluster, "get", "vms", "-n", namespace, *flags).stdout


def own_slices(cluster: Cluster, vm: VM, namespace: str) -> list[dict[str, Any]]:
    return cluster.list("endpointslice", namespace, f"vmesh.dev/vm={vm.name}")


def ready_at(cluster: Cluster, vm: VM, namespace: str) -> bool:
    return any(e["addresses"] == [vm.address] and e["conditions"].get("ready")
               for s in own_slices(cluster, vm, namespace) for e in s.get("endpoints") or [])


def test_enroll_a_vm_runs_on_its_bundle_shows_in_get_vms_and_revoke_cuts_it_off(
    cluster: Cluster, installed: str, make_vm: Callable[[str], VM], mariadb_template: Path, tmp_path: Path
) -> None:
    namespace = installed
    kubectl_vmesh(cluster, "install", "-n", namespace)
    vm = make_vm("enr")
    account = f"vmesh-vm-{vm.name}"
    bundle = tmp_path / "bundle.tar.gz"
    out = kubectl_vmesh(cluster, "enroll", vm.name, "-n", namespace, "--output", str(bundle),
                 "--server", cluster.url_from_vms, "--token-lifetime", "2h", cwd=tmp_path).stdout
    assert f"serviceaccount/{account} created" in out

    token = bundle_token(bundle, cluster, vm, namespace)

    # The identity behind it: the VM's own ServiceAccount, bound to the shared Role; the token is for it.
    sa = cluster.get("serviceaccount", account, namespace)
    assert sa is not None and sa["metadata"]["labels"]["vmesh.dev/vm"] == vm.name
    binding = cluster.get("rolebinding", account, namespace)
    assert binding is not None
    assert binding["roleRef"]["name"] == "vmesh-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    leases_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    assert status_with_token(cluster, token, leases_path) == 200
    review = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})).stdout)
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{namespace}:{account}"

    # Copied into a VM running MariaDB, the bundle alone registers it.
    vm.start_mariadb(mariadb_template)
    vm.start_agent(install_bundle(vm, bundle))
    wait_until(lambda: ready_at(cluster, vm, namespace), 30, "the VM's MariaDB registered, ready")

    check_fleet_view(cluster, vm, namespace)

    # Revoked: the token is refused at once, and the VM's identity and objects are gone, and stay gone although
    # its agent still runs. At once the RoleBinding is gone (403); the apiserver caches a token's successful
    # authentication for 10 s (kube-apiserver built-in, no flag), after which the token of a deleted account is 401.
    out = kubectl_vmesh(cluster, "revoke", vm.name, "-n", namespace).stdout
    revoked = time.monotonic()
    assert status_with_token(cluster, token, leases_path) in (401, 403)
    wait_until(lambda: status_with_token(cluster, token, leases_path) == 401, 12, "the revoked token refused", 0.2)
    print(f"revoked token unauthenticated {time.monotonic() - revoked:.1f}s after revoke")
    assert f"serviceaccount/{account} deleted" in out
    assert cluster.get("serviceaccount", account, namespace) is None
    assert cluster.get("rolebinding", account, namespace) is None
    assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is None
    assert own_slices(cluster, vm, namespace) == []
    time.sleep(3)  # several heartbeats and syncs of the agent, refused
    assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is None
    assert own_slices(cluster, vm, namespace) == []
    assert vm.name not in {r["vm"] for r in json.loads(get_vms(cluster, namespace, "-o", "json"))}


def bundle_token(bundle: Path, cluster: Cluster, vm: VM, namespace: str) -> str:
    """The bundle: config, token (root:vmesh-agent 0640) and CA, at the top of the tarball. Returns the token."""
    with tarfile.open(bundle) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"config.toml", "token", "ca.crt"}
        assert (members["token"].mode, members["token"].gname) == (0o640, "vmesh-agent")
        config = tar.extractfile("config.toml").read().decode()  # type: ignore[union-attr]
        token = tar.extractfile("token").read().decode().strip()  # type: ignore[union-attr]
        ca = tar.extractfile("ca.crt").read()  # type: ignore[union-attr]
    assert ca == Path(cluster.ca_file).read_bytes()
    for line in (f'vm_name = "{vm.name}"', f'namespace = "{namespace}"', f'server = "{cluster.url_from_vms}"',
                 'ca_file = "/etc/vmesh-agent/ca.crt"', 'token_file = "/etc/vmesh-agent/token"'):
        assert line in config.splitlines(), line
    return token


def check_fleet_view(cluster: Cluster, vm: VM, namespace: str) -> None:
    account = f"vmesh-vm-{vm.name}"
    # The fleet view, as a person reads it and as a script does; a Lease written with the shared account of the
    # first releases shows as legacy.
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "vmesh-oldvm", "namespace": namespace,
                     "labels": {"vmesh.dev/vm": "oldvm", "app.kubernetes.io/managed-by": "vmesh-agent"}},
        "spec": {"holderIdentity": "oldvm", "leaseDurationSeconds": 3600}}))
    table = get_vms(cluster, namespace, "--context", "test").splitlines()
    assert table[0].split() == ["VM", "IDENTITY", "MACHINE", "RENEWED", "HEARTBEAT", "BACKEND", "SERVICES",
                                "ENDPOINTS"]
    row = next(line.split() for line in table if line.startswith(vm.name + " "))
    assert row[1] == account
    assert row[3].endswith("s") and row[4] == "ago"
    assert row[5:] == ["5s", "endpointslice", "mysqldb", "1", "ready"]  # the bundle's config: the default 5 s
    assert next(line for line in table if line.startswith("oldvm ")).split()[1] == "legacy"

    rows = {r["vm"]: r for r in json.loads(get_vms(cluster, namespace, "-o", "json"))}
    mine = rows[vm.name]
    assert mine["identity"] == account
    assert (mine["ready"], mine["not_ready"], mine["addresses"], mine["services"]) == (1, 0, [vm.address], ["mysqldb"])
    assert mine["holder"].startswith(f"{vm.name}/") and mine["machine"]
    assert mine["renewed_ago"] < 30
    assert rows["oldvm"]["identity"] == "legacy"
    as_yaml = {r["vm"]: r for r in yaml.safe_load(get_vms(cluster, namespace, "-o", "yaml"))}
    assert (as_yaml[vm.name]["identity"], as_yaml[vm.name]["ready"]) == (account, 1)
    wide = get_vms(cluster, namespace, "-o", "wide")
    assert "HOLDER" in wide and vm.address in wide
