"""The pure parts of `kubectl vmesh`: the fleet table, the bundle, the manifests moved to a namespace."""

from __future__ import annotations

import datetime
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cluster.resources import Resource
from agent.config import parse_settings
from agent.plugin import fleet, manifests
from agent.plugin.bundle import Bundle, DeclaredService
from agent.plugin.cli import _lifetime

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


def lease(vm: str, holder: str, renewed: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": f"vmesh-{vm}", "labels": {"vmesh.dev/vm": vm},
                         "annotations": annotations or {}},
            "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15}}


def account(vm: str) -> dict[str, Any]:
    return {"metadata": {"name": f"vmesh-vm-{vm}", "labels": {"vmesh.dev/vm": vm}}}


def endpoint_slice(vm: str, service: str, *ready: bool) -> dict[str, Any]:
    return {"metadata": {"labels": {"vmesh.dev/vm": vm, "kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": r}} for i, r in enumerate(ready)]}


def test_fleet_rows_from_leases_slices_and_accounts() -> None:
    rows = fleet.fleet(
        leases=[lease("db1", "db1/0123456789ab/ba9876543210/42", "2026-12-01T11:59:57.000000Z"),
                lease("old", "old", "2026-12-01T11:00:00Z"),
                lease("mesh", "mesh/aaaa/bbbb/7", "2026-12-01T12:00:01Z",  # a VM clock ahead of the admin's
                      {"vmesh.dev/holder-machine": "web-7", "vmesh.dev/backend": "workloadentry",
                       "vmesh.dev/agent-version": "0.9.0", "vmesh.dev/services": "web,api"})],
        accounts=[account("db1"), account("mesh"), account("fresh"),
                  {"metadata": {"name": "vmesh-agent", "labels": {"vmesh.dev/vm": "agent"}}}],
        slices=[endpoint_slice("db1", "mysqldb", True, False), endpoint_slice("old", "mysqldb", True)],
        workloads=[{"kind": "WorkloadEntry", "metadata": {"labels": {"vmesh.dev/vm": "mesh", "app": "web"}},
                    "spec": {"address": "10.1.0.5"},
                    "status": {"conditions": [{"type": "Healthy", "status": "False"}]}}],
        now=NOW,
    )
    by_vm = {r.vm: r for r in rows}
    assert [r.vm for r in rows] == ["db1", "fresh", "mesh", "old"]  # the shared account is no VM "agent"
    db1 = by_vm["db1"]
    assert (db1.identity, db1.machine, db1.renewed_ago, db1.backend) == ("vmesh-vm-db1", "0123456789ab", 3.0,
                                                                        "endpointslice")
    assert (db1.services, db1.ready, db1.not_ready, db1.addresses) == (["mysqldb"], 1, 1, ["10.0.0.1", "10.0.0.2"])
    assert by_vm["old"].identity == fleet.LEGACY
    assert by_vm["old"].machine == ""
    assert (by_vm["fresh"].identity, by_vm["fresh"].renewed_ago) == ("vmesh-vm-fresh", None)
    mesh = by_vm["mesh"]
    assert (mesh.machine, mesh.backend, mesh.agent_version, mesh.services) == ("web-7", "workloadentry", "0.9.0",
                                                                              ["web", "api"])
    assert (mesh.ready, mesh.not_ready, mesh.renewed_ago) == (0, 1, 0.0)
    # Issue 20: a VM dead and not reaped (a lone VM has no peer) shows as stale, one renewing does not.
    assert by_vm["old"].stale and not db1.stale and not by_vm["fresh"].stale
    assert "60m ago STALE" in fleet.table(rows) and by_vm["old"].as_dict()["stale"] is True


def test_table_is_aligned_and_says_what_is_missing() -> None:
    rows = [fleet.VmRow("db1", "vmesh-vm-db1", holder="db1/m/b/1", machine="m", renewed_ago=3.4, heartbeat="20s",
                        pace="scaled: fleet of 4000 VMs, budget 200 writes/s",
                        backend="endpointslice", services=["mysqldb"], ready=1, not_ready=1),
            fleet.VmRow("fresh-vm", "vmesh-vm-fresh-vm")]
    assert fleet.table(rows).splitlines() == [
        "VM         IDENTITY            MACHINE   RENEWED   HEARTBEAT   BACKEND         SERVICES   ENDPOINTS",
        "db1        vmesh-vm-db1        m         3s ago    20s         endpointslice   mysqldb    1 ready, "
        "1 not ready",
        "fresh-vm   vmesh-vm-fresh-vm   -         never     -           -               -          0 ready",
    ]
    wide = fleet.table(rows, wide=True).splitlines()
    assert wide[0].split()[-4:] == ["AGENT", "ADDRESSES", "HOLDER", "PACE"]
    assert wide[1].endswith("scaled: fleet of 4000 VMs, budget 200 writes/s")


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (119.9, "119s"), (120, "2m"), (7199, "119m"),
                                               (7200, "2h"), (172800, "2d"), (None, "never")])
def test_age_as_kubectl_prints_it(seconds: float | None, text: str) -> None:
    assert fleet.age(seconds) == text


def make_bundle(**changes: Any) -> Bundle:
    fields: dict[str, Any] = {"vm_name": "db1", "namespace": "vm", "server": "https://k8s.example:6443",
                              "token": "tok.en", "ca_certificate": b"-----BEGIN CERTIFICATE-----\n", **changes}
    return Bundle(**fields)


def test_bundle_config_is_what_the_agent_reads() -> None:
    bundle = make_bundle(services=(DeclaredService.parse("mysqldb:3306"), DeclaredService.parse("cache")),
                         cidrs=("10.0.0.0/24",), header="written by a test\nsecond line")
    text = bundle.config_toml()
    assert text.startswith("# written by a test\n# second line\n")
    settings = parse_settings(text, require_cluster=False)
    assert (settings.vm_name, settings.namespace) == ("db1", "vm")
    assert (settings.cluster.server, settings.cluster.ca_file, settings.cluster.token_file) == (
        "https://k8s.example:6443", "/etc/vmesh-agent/ca.crt", "/etc/vmesh-agent/token")
    assert settings.address.cidr == "10.0.0.0/24"
    assert [(s.name, s.port, s.protocol) for s in settings.service] == [("mysqldb", 3306, "mysql")]  # cache: no port
    assert "ca_file" not in make_bundle(ca_certificate=b"").config_toml()


def test_bundle_as_a_directory_keeps_the_token_private(tmp_path: Path) -> None:
    make_bundle().write(tmp_path / "out")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {"config.toml": 0o644, "token": 0o600, "ca.crt": 0o644}
    assert (tmp_path / "out" / "token").read_text() == "tok.en\n"
    (tmp_path / "out" / "token").chmod(0o644)
    make_bundle(token="new").write(tmp_path / "out")  # re-enrolled: rewritten, mode corrected
    assert stat.S_IMODE((tmp_path / "out" / "token").stat().st_mode) == 0o600


def test_bundle_as_a_tarball_unpacks_into_the_config_dir(tmp_path: Path) -> None:
    make_bundle().write(tmp_path / "db1.tar.gz")
    assert stat.S_IMODE((tmp_path / "db1.tar.gz").stat().st_mode) == 0o600
    with tarfile.open(tmp_path / "db1.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    # Unpacked by root on a VM where the package is installed (re-enrollment, issue 20), the token is the
    # agent's group's: GNU tar restores owners by name. Before the package exists the postinst hands it over.
    assert {n: (m.mode, m.uname, m.gname) for n, m in members.items()} == {
        "config.toml": (0o644, "root", "root"), "token": (0o640, "root", "vmesh-agent"),
        "ca.crt": (0o644, "root", "root")}


@pytest.mark.parametrize("text", ["", "db:", "db:x", "db:0", "db:70000", ":3306"])
def test_declared_service_refuses_what_is_no_name_and_port(text: str) -> None:
    with pytest.raises(ValueError, match="NAME:PORT"):
        DeclaredService.parse(text)


def test_token_lifetime_takes_days() -> None:
    assert (_lifetime("30d"), _lifetime("720h"), _lifetime("10m")) == (30 * 86400, 30 * 86400, 600)


def test_shipped_manifests_load_in_name_order_and_move_to_a_namespace() -> None:
    assert [p.name for p in manifests.manifest_files()] == sorted(p.name for p in manifests.manifest_files())
    assert "rbac.yaml" in [p.name for p in manifests.manifest_files()]
    docs = manifests.load("tenant-a")
    text = manifests.dump(docs)
    assert "namespace: vm\n" not in text
    assert not [d for d in docs if d["metadata"].get("namespace") not in (None, "tenant-a")]
    assert next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"] == "tenant-a"
    as_shipped = [d for p in manifests.manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]
    assert manifests.load() == as_shipped


def test_namespace_rewrite_reaches_user_names_selectors_and_cluster_scoped_names() -> None:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vm"}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": "vmesh-isolation"},
         "spec": {"matchConditions": [{"name": "vm-accounts",
                                       "expression": "request.userInfo.username.startsWith("
                                                     "'system:serviceaccount:vm:vmesh-vm-')"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": "vmesh-isolation"},
         "spec": {"policyName": "vmesh-isolation", "matchResources": {
             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vm"}}}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "vmesh-agent", "namespace": "vm"},
         "roleRef": {"kind": "Role", "name": "vmesh-agent"},
         "subjects": [{"kind": "ServiceAccount", "name": "vmesh-agent", "namespace": "vm"}]},
    ]
    assert manifests.in_namespace(docs, "vm") is docs
    ns, policy, binding, role_binding = manifests.in_namespace(docs, "t1")
    assert ns["metadata"]["name"] == "t1"
    assert policy["metadata"]["name"] == "vmesh-isolation-t1"
    assert "'system:serviceaccount:t1:vmesh-vm-'" in policy["spec"]["matchConditions"][0]["expression"]
    assert policy["spec"]["matchConditions"][0]["name"] == "vm-accounts"
    assert (binding["metadata"]["name"], binding["spec"]["policyName"]) == ("vmesh-isolation-t1", "vmesh-isolation-t1")
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    assert selector["matchLabels"] == {"kubernetes.io/metadata.name": "t1"}
    assert role_binding["metadata"] == {"name": "vmesh-agent", "namespace": "t1"}
    assert role_binding["roleRef"]["name"] == "vmesh-agent"
    assert role_binding["subjects"][0]["namespace"] == "t1"
    assert docs[0]["metadata"]["name"] == "vm"  # the input is left as it was


def test_resources_of_manifests() -> None:
    policy = manifests.resource_of({"apiVersion": "admissionregistration.k8s.io/v1",
                                    "kind": "ValidatingAdmissionPolicy"})
    assert policy == Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", cluster_scoped=True)
    assert policy.path("ignored", "p") == "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/p"
    assert manifests.resource_of({"apiVersion": "v1", "kind": "Namespace"}).path("", "vm") == "/api/v1/namespaces/vm"
    assert manifests.resource_of({"apiVersion": "v1", "kind": "ServiceAccount"}).path("vm") == (
        "/api/v1/namespaces/vm/serviceaccounts")
    assert manifests.describe({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                               "metadata": {"name": "r"}}) == "role.rbac.authorization.k8s.io/r"
