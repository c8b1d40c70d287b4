"""The apiserver keeps each VM to its own objects (packaging/kubernetes/policy.yaml), tried with a VM's token
through kubectl, not through the agent: what a stolen token could do."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.crds import install_istio_crds
from tests.testbed.plugin import install_bundle, kubectl_vmesh
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

ISOLATION = "vmesh-vm-isolation"  # the per-VM policy of policy.yaml


class AsVM:
    """kubectl with one VM's own token (ServiceAccount vmesh-vm-<vm>), nothing of the admin's."""

    def __init__(self, cluster: Cluster, namespace: str, vm: str, token: str = "") -> None:
        """With `token`, that one (from `kubectl vmesh enroll`'s bundle); else a fresh one from the test bed."""
        self.cluster, self.namespace, self.vm = cluster, namespace, vm
        self.token = token or cluster.token(namespace, vm=vm)

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = self.cluster.env
        cmd = [f"{env['BIN']}/kubectl", "--kubeconfig", "/dev/null", "--server", env["APISERVER_URL"],
               "--certificate-authority", env["CA_FILE"], "--token", self.token, "-n", self.namespace, *args]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60, check=False)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self.run(*args, input=input)
        assert result.returncode == 0, f"{self.vm}: {' '.join(args)}: {result.stderr}"
        return result.stdout

    def denied(self, message: str, *args: str, input: str | None = None, policy: str = ISOLATION) -> None:
        result = self.run(*args, input=input)
        assert result.returncode != 0, f"{self.vm} may not: {' '.join(args)}"
        by = f"ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request"
        assert by in result.stderr and message in result.stderr, result.stderr

    def create(self, obj: Mapping[str, object]) -> dict[str, object]:
        created: dict[str, object] = json.loads(self.ok("create", "-o", "json", "-f", "-", input=json.dumps(obj)))
        return created


def lease(vm: str) -> dict[str, object]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": f"vmesh-{vm}", "labels": {"vmesh.dev/vm": vm,
                                                           "app.kubernetes.io/managed-by": "vmesh-agent"}},
            "spec": {"holderIdentity": f"{vm}/test", "leaseDurationSeconds": 15}}


def slice_of(vm: str, labelled: str = "", owner: dict[str, object] | None = None) -> dict[str, object]:
    metadata: dict[str, object] = {
        "name": f"mysqldb-{vm}-{uuid.uuid4().hex[:6]}",
        "labels": {"kubernetes.io/service-name": "mysqldb", "endpointslice.kubernetes.io/managed-by": "vmesh-agent",
                   "vmesh.dev/vm": labelled or vm}}
    if owner:
        meta = owner["metadata"]
        assert isinstance(meta, dict)
        metadata["ownerReferences"] = [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "name": meta["name"], "uid": meta["uid"]}]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata,
            "addressType": "IPv4", "ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["198.18.9.9"], "conditions": {"ready": True}}]}


def name_of(obj: dict[str, object]) -> str:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return str(meta["name"])


SERVICE = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "mysqldb", "labels": {"app.kubernetes.io/managed-by": "vmesh-agent"}},
           "spec": {"ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}]}}


def test_a_vm_token_touches_only_its_own_objects(cluster: Cluster, namespace: str) -> None:
    suffix = uuid.uuid4().hex[:4]
    a, b = AsVM(cluster, namespace, f"a-{suffix}"), AsVM(cluster, namespace, f"b-{suffix}")
    a_lease, b_lease = a.create(lease(a.vm)), b.create(lease(b.vm))
    b_slice = name_of(b.create(slice_of(b.vm, owner=b_lease)))
    a_slice = name_of(a.create(slice_of(a.vm, owner=a_lease)))

    # Another VM's objects: neither deleted nor updated, nor created in its name, nor taken by relabelling.
    a.denied(f"vmesh-vm-{a.vm} may not delete endpointslices {b_slice}: it is not this VM's",
             "delete", "endpointslice", b_slice)
    a.denied(f"vmesh-vm-{a.vm} may not modify endpointslices {b_slice}: it is not this VM's",
             "label", "endpointslice", b_slice, "evil=yes")
    a.denied(f"vmesh-vm-{a.vm} may not modify endpointslices {b_slice}",
             "patch", "endpointslice", b_slice, "--type=json",
             "-p", '[{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "198.18.66.66"}]')
    a.denied(f"vmesh-vm-{a.vm} may create endpointslices only labelled vmesh.dev/vm={a.vm}",
             "create", "-f", "-", input=json.dumps(slice_of(a.vm, labelled=b.vm)))
    a.denied(f"vmesh-vm-{a.vm} may not change the label vmesh.dev/vm of endpointslices {a_slice}",
             "label", "--overwrite", "endpointslice", a_slice, f"vmesh.dev/vm={b.vm}")
    a.denied(f"may not modify leases vmesh-{b.vm}", "label", "lease", f"vmesh-{b.vm}", "evil=yes")
    # Its own Lease's creation and renewals skip the rules (issue 21: the hot path); anything else is judged.
    a.denied(f"may create leases only labelled vmesh.dev/vm={a.vm}", "create", "-f", "-", input=json.dumps(
        {**lease(a.vm), "metadata": {"name": f"vmesh-{a.vm}", "labels": {"vmesh.dev/vm": b.vm}}}))
    a.denied(f"may not change the label vmesh.dev/vm of leases vmesh-{a.vm}",
             "label", "--overwrite", "lease", f"vmesh-{a.vm}", f"vmesh.dev/vm={b.vm}")
    a.denied(f"may not change the label vmesh.dev/vm of leases vmesh-{a.vm}",
             "label", "lease", f"vmesh-{a.vm}", "vmesh.dev/vm-")
    a.denied(f"may create only its own Lease vmesh-{a.vm} (or a reaper slot), not vmesh-{b.vm}x",
             "create", "-f", "-", input=json.dumps({**lease(a.vm), "metadata": {
                 "name": f"vmesh-{b.vm}x", "labels": {"vmesh.dev/vm": a.vm}}}))
    a.denied(f"may request tokens only for its own ServiceAccount, not for vmesh-vm-{b.vm}",
             "create", "token", f"vmesh-vm-{b.vm}")
    a.denied("the legacy shared Endpoints cannot be isolated per VM", "create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "mysqldb"}}))

    # The shared Service: created only as the agent creates it (issue 19: what else it is created with stays).
    owned_by_b = [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": f"vmesh-{b.vm}",
                   "uid": json.loads(json.dumps(b_lease))["metadata"]["uid"]}]

    def service_with(part: str, fields: Mapping[str, object]) -> str:
        svc = json.loads(json.dumps(SERVICE))
        svc[part].update(fields)
        return json.dumps(svc)

    for metadata in ({"ownerReferences": owned_by_b}, {"finalizers": ["example.com/hold"]}):
        a.denied("may not create Service mysqldb with ownerReferences or finalizers", "create", "-f", "-",
                 input=service_with("metadata", metadata))
    for spec in ({"clusterIP": "None"}, {"internalTrafficPolicy": "Local"}, {"sessionAffinity": "ClientIP"},
                 {"publishNotReadyAddresses": True}):
        a.denied("may not create Service mysqldb headless, with internalTrafficPolicy Local, session affinity",
                 "create", "-f", "-", input=service_with("spec", spec))
    # Then extended; never shrunk, redirected, handed to the garbage collector, held or deleted.
    a.create(SERVICE)
    for patch in ({"metadata": {"ownerReferences": owned_by_b}}, {"metadata": {"finalizers": ["example.com/hold"]}}):
        a.denied("may change only the ports (add) and the selector (set) of Service mysqldb, not its labels, "
                 "annotations, owners, finalizers", "patch", "service", "mysqldb", "-p", json.dumps(patch))
    a.ok("patch", "service", "mysqldb", "--type=json",
         "-p", '[{"op": "add", "path": "/spec/ports/-", "value": {"name": "http", "port": 8080, "protocol": "TCP"}}]')
    a.denied("may not remove or change a port of Service mysqldb", "patch", "service", "mysqldb", "--type=json",
             "-p", '[{"op": "remove", "path": "/spec/ports/0"}]')
    a.denied("may not change the selector of Service mysqldb", "patch", "service", "mysqldb",
             "-p", '{"spec": {"selector": {"role": "attacker"}}}')
    a.denied("may change only the ports (add) and the selector (set) of Service mysqldb", "patch", "service",
             "mysqldb", "-p", '{"spec": {"sessionAffinity": "ClientIP"}}')
    refused = a.run("delete", "service", "mysqldb")  # the Role grants no delete; the policy would refuse it too
    assert refused.returncode != 0 and 'cannot delete resource "services"' in refused.stderr, refused.stderr
    # The mesh backends' selector, on a selector-less Service vmesh-agent created, is allowed (once).
    a.ok("patch", "service", "mysqldb", "-p", '{"spec": {"selector": {"app": "mysqldb"}}}')
    a.denied("may not change the selector of Service mysqldb", "patch", "service", "mysqldb",
             "-p", '{"spec": {"selector": {"app": "elsewhere"}}}')

    # Its own slice, but not a bigger share of the traffic than its addresses (issue 19).
    share = "may write endpointslices with at most 16 endpoints of one address each, every address once"

    def slice_with(addresses: list[list[str]]) -> str:
        body = json.loads(json.dumps(slice_of(a.vm, owner=a_lease)))
        body["endpoints"] = [{"addresses": group, "conditions": {"ready": True}} for group in addresses]
        return json.dumps(body)

    a.denied(share, "create", "-f", "-", input=slice_with([[f"198.18.{i // 250}.{i % 250 + 1}"] for i in range(1000)]))
    a.denied(share, "create", "-f", "-", input=slice_with([["198.18.9.9"]] * 100))
    a.denied(share, "create", "-f", "-", input=slice_with([["198.18.9.9"], ["198.18.9.9"]]))
    a.denied(share, "patch", "endpointslice", a_slice, "--type=json", "-p",
             json.dumps([{"op": "add", "path": "/endpoints/-", "value": {"addresses": ["198.18.9.9"]}}]))
    a.ok("delete", "endpointslice", name_of(a.create(json.loads(slice_with([["198.18.9.9"], ["198.18.9.10"]])))))

    # The same operations on its own objects succeed, and so does its own token request.
    a.ok("label", "endpointslice", a_slice, "checked=yes")
    a.ok("patch", "endpointslice", a_slice, "--type=json",
         "-p", '[{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "198.18.9.10"}]')
    a.ok("create", "token", f"vmesh-vm-{a.vm}")
    a.ok("delete", "endpointslice", a_slice)
    a.ok("label", "lease", f"vmesh-{a.vm}", "checked=yes")

    # Reaping: a peer deletes the dead VM's Lease (allowed), the garbage collector removes its slice.
    assert cluster.get("endpointslice", b_slice, namespace) is not None
    a.ok("delete", "lease", f"vmesh-{b.vm}")
    wait_until(lambda: cluster.get("endpointslice", b_slice, namespace) is None, 30,
               "the dead VM's slice removed by the garbage collector")


def test_reaper_slots_are_anyones_but_stay_slots(cluster: Cluster, namespace: str) -> None:
    suffix = uuid.uuid4().hex[:4]
    a, b = AsVM(cluster, namespace, f"a-{suffix}"), AsVM(cluster, namespace, f"b-{suffix}")
    slot = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "vmesh-reaper-0", "labels": {"vmesh.dev/reaper-slot": "0",
                                                              "app.kubernetes.io/managed-by": "vmesh-agent"}},
            "spec": {"holderIdentity": f"{a.vm}/x", "leaseDurationSeconds": 15}}
    a.create(slot)
    b.ok("patch", "lease", "vmesh-reaper-0", "-p", json.dumps({"spec": {"holderIdentity": f"{b.vm}/y"}}))
    b.denied("may not modify leases vmesh-reaper-0", "label", "lease",
             "vmesh-reaper-0", f"vmesh.dev/vm={b.vm}")
    b.denied("may not delete leases vmesh-reaper-0", "delete", "lease", "vmesh-reaper-0")
    b.denied(f"may create leases only labelled vmesh.dev/vm={b.vm}", "create", "-f", "-", input=json.dumps(
        {**slot, "metadata": {"name": "vmesh-other", "labels": {"app.kubernetes.io/managed-by": "vmesh-agent"}}}))
    # Issue 19: neither held for ever nor multiplied.
    bounded = "may write a reaper slot only as vmesh-reaper-<k> labelled vmesh.dev/reaper-slot=<k>, k from 0 to 15"
    b.denied(bounded, "patch", "lease", "vmesh-reaper-0", "-p",
             json.dumps({"spec": {"holderIdentity": f"{b.vm}/y", "leaseDurationSeconds": 2147483647}}))
    for name, index in (("vmesh-reaper-999", "999"), ("vmesh-reaper-1", "0"), ("vmesh-reaper-16", "16")):
        b.denied(bounded, "create", "-f", "-", input=json.dumps(
            {**slot, "metadata": {"name": name, "labels": {"vmesh.dev/reaper-slot": index,
                                                           "app.kubernetes.io/managed-by": "vmesh-agent"}}}))
    b.ok("patch", "lease", "vmesh-reaper-0", "-p", json.dumps({"spec": {"leaseDurationSeconds": 300}}))


def test_the_shared_legacy_token_cannot_mint_a_vm_token(cluster: Cluster, namespace: str) -> None:
    """The Role grants TokenRequest for the VMs' self-renewal; the legacy account shares the Role, and must not
    use it to become any VM."""
    vm = f"v{uuid.uuid4().hex[:4]}"
    cluster.enroll(namespace, vm)
    legacy = AsVM.__new__(AsVM)
    legacy.cluster, legacy.namespace, legacy.vm = cluster, namespace, "the legacy account"
    legacy.token = cluster.token(namespace, shared=True)
    legacy.denied("the shared legacy account vmesh-agent may not request tokens", "create", "token",
                  f"vmesh-vm-{vm}", policy="vmesh-legacy-no-tokens")


def test_a_vm_takes_no_bigger_share_through_a_workload_entry_weight(cluster: Cluster, namespace: str) -> None:
    """Issue 19: a WorkloadEntry of its own with `weight: 1000000` took almost all of a service's mesh traffic."""
    install_istio_crds(cluster)
    a = AsVM(cluster, namespace, f"a-{uuid.uuid4().hex[:4]}")
    owner = a.create(lease(a.vm))["metadata"]
    assert isinstance(owner, dict)
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
             "metadata": {"name": f"mysqldb-{a.vm}-4", "labels": {"vmesh.dev/vm": a.vm, "app": "mysqldb",
                                                                  "app.kubernetes.io/managed-by": "vmesh-agent"},
                          "ownerReferences": [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                               "name": owner["name"], "uid": owner["uid"]}]},
             "spec": {"address": "198.18.9.9", "ports": {"mysql": 3306}, "labels": {"app": "mysqldb"}}}
    a.denied(f"may not give workloadentries mysqldb-{a.vm}-4 a weight", "create", "-f", "-",
             input=json.dumps({**entry, "spec": {"address": "198.18.9.9", "ports": {"mysql": 3306},
                                                 "labels": {"app": "mysqldb"}, "weight": 1000000}}))
    a.create(entry)
    a.denied(f"may not give workloadentries mysqldb-{a.vm}-4 a weight", "patch", "workloadentry",
             f"mysqldb-{a.vm}-4", "--type=merge", "-p", '{"spec": {"weight": 1000000}}')


ENROLLMENT = "vmesh-vm-enrollment"
OUTSIDE = "198.18.254.254"  # inside the test bed's VM range, never handed out (tests/testbed/vm.py)


def enrolled(cluster: Cluster, namespace: str, vm: str, where: Path, *flags: str) -> AsVM:
    """VM `vm` enrolled by `kubectl vmesh enroll` (which returns once its binding is enforced), with its token."""
    kubectl_vmesh(cluster, "enroll", vm, "-n", namespace, "-o", str(where / vm), "--server", cluster.url_from_vms,
                  *flags)
    return AsVM(cluster, namespace, vm, token=(where / vm / "token").read_text().strip())


def endpoint_slice(vm: str, service: str, *addresses: str) -> str:
    body = slice_of(vm)
    body["metadata"]["name"] = f"{service}-{vm}-{uuid.uuid4().hex[:8]}"  # type: ignore[index]
    body["metadata"]["labels"]["kubernetes.io/service-name"] = service  # type: ignore[index]
    body["endpoints"] = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    return json.dumps(body)


def workload_entry(vm: str, service: str, address: str) -> str:
    return json.dumps({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                       "metadata": {"name": f"{service}-{vm}-{uuid.uuid4().hex[:8]}",
                                    "labels": {"vmesh.dev/vm": vm, "app": service,
                                               "app.kubernetes.io/managed-by": "vmesh-agent"}},
                       "spec": {"address": address, "ports": {"mysql": 3306}, "labels": {"app": service}}})


DRY = ("create", "--dry-run=server", "-f", "-")  # admitted (or refused) as a real write, never stored


def attacks_outside_the_enrollment(a: AsVM, a_address: str, b: AsVM) -> None:
    """What VM A's stolen token tried in issue 19 (A enrolled for its address /32 and mysqldb, for 2 days; B
    enrolled without --cidr/--service), each refused by the rule that names it."""
    a.denied(f"vmesh-vm-{a.vm} may publish only addresses inside the CIDRs it was enrolled for ({a_address}/32), "
             f"not {OUTSIDE}", *DRY, input=endpoint_slice(a.vm, "mysqldb", OUTSIDE), policy=ENROLLMENT)
    for address in ("10.96.0.1", "10.244.3.4"):  # the `kubernetes` Service, a Pod
        for vm in (a, b):
            vm.denied(f"vmesh-vm-{vm.vm} may not publish {address}: inside the cluster's Service or Pod ranges",
                      *DRY, input=endpoint_slice(vm.vm, "mysqldb", address), policy=ENROLLMENT)
    for address in ("127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "db.example.com"):
        b.denied("may publish only unicast IP addresses, not loopback, link-local (the metadata address), "
                 f"unspecified or multicast ones: {address}", *DRY, input=workload_entry(b.vm, "mysqldb", address))
    services = f"vmesh-vm-{a.vm} was enrolled for the services mysqldb only, not redis"
    a.denied(services, *DRY, input=endpoint_slice(a.vm, "redis", a_address), policy=ENROLLMENT)
    a.denied(services, *DRY, input=workload_entry(a.vm, "redis", a_address), policy=ENROLLMENT)
    a.denied(services, *DRY, input=json.dumps({**SERVICE, "metadata": {
        "name": "redis", "labels": {"app.kubernetes.io/managed-by": "vmesh-agent"}}}), policy=ENROLLMENT)
    a.denied(f"vmesh-vm-{a.vm} may request tokens lasting at most 172800 s (its enrollment's --token-lifetime), "
             "not 315360000 s", "create", "token", f"vmesh-vm-{a.vm}", "--duration", "87600h", policy=ENROLLMENT)
    b.denied(f"vmesh-vm-{b.vm} may request tokens lasting at most 2592000 s", "create", "token",
             f"vmesh-vm-{b.vm}", "--duration", "87600h", policy=ENROLLMENT)  # enroll's default, 30 days
    a.denied(f"vmesh-vm-{a.vm} may request tokens only for the apiserver's own audiences "
             "(https://kubernetes.default.svc), not vault", "create", "token", f"vmesh-vm-{a.vm}", "--audience",
             "vault", policy=ENROLLMENT)
    # Another VM's object name, taken first so that its own create fails (409).
    squat = json.loads(endpoint_slice(a.vm, "mysqldb", a_address))
    squat["metadata"]["name"] = f"mysqldb-{b.vm}-0123abcd"
    a.denied(f"may create endpointslices only named mysqldb-{a.vm}-… (its service, then its VM name), not "
             f"mysqldb-{b.vm}-0123abcd", *DRY, input=json.dumps(squat))


def inside_the_enrollment(a: AsVM, a_address: str, b: AsVM) -> None:
    """The same writes inside each VM's enrollment are admitted."""
    a.ok(*DRY, input=endpoint_slice(a.vm, "mysqldb", a_address))
    b.ok(*DRY, input=endpoint_slice(b.vm, "redis", OUTSIDE))
    a.ok("create", "token", f"vmesh-vm-{a.vm}", "--duration", "48h")
    b.ok("create", "token", f"vmesh-vm-{b.vm}", "--duration", "720h")


@pytest.mark.vm
def test_a_vm_is_held_to_the_addresses_services_and_token_lifetime_it_was_enrolled_for(
        cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path,
        tmp_path: Path) -> None:
    install_istio_crds(cluster)
    vm_a, vm_b = make_vm("a"), make_vm("b")
    bundles = tmp_path / "bundles"  # not tmp_path/<vm>: the VM's own work directory
    a = enrolled(cluster, namespace, vm_a.name, bundles, "--cidr", f"{vm_a.address}/32",
                 "--service", "mysqldb:3306", "--token-lifetime", "2d")
    b = enrolled(cluster, namespace, vm_b.name, bundles)  # no --cidr/--service: the documented default
    for vm in (vm_a, vm_b):  # both agents run on their bundles, MariaDB on the VM
        vm.start_mariadb(mariadb_template)
        vm.start_agent(install_bundle(vm, bundles / vm.name))
    for vm in (vm_a, vm_b):
        wait_until(partial(ready_at, cluster, vm, namespace), 30, f"{vm.name} registered, ready")

    attacks_outside_the_enrollment(a, vm_a.address, b)
    inside_the_enrollment(a, vm_a.address, b)

    # An apiserver restarted: the rules hold from its first answers once it is ready (/readyz) on.
    cluster.stop("kube-apiserver")
    cluster.start("kube-apiserver")
    attacks_outside_the_enrollment(a, vm_a.address, b)
    inside_the_enrollment(a, vm_a.address, b)
    # Both agents stayed registered throughout (and make_vm fails the test if a write of theirs was refused).
    for vm in (vm_a, vm_b):
        wait_until(partial(ready_at, cluster, vm, namespace), 30, f"{vm.name} still registered, ready")


def ready_at(cluster: Cluster, vm: VM, namespace: str) -> bool:
    return any(e["addresses"] == [vm.address] and e["conditions"].get("ready")
               for s in cluster.list("endpointslice", namespace, f"vmesh.dev/vm={vm.name}")
               for e in s.get("endpoints") or [])


def test_revoke_lets_the_reaper_slots_of_the_vm_go(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """Issue 19: slots a revoked VM held stayed taken for their duration, whatever it wrote."""
    a = enrolled(cluster, namespace, f"a-{uuid.uuid4().hex[:4]}", tmp_path)
    for k in (3, 4):
        a.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                  "metadata": {"name": f"vmesh-reaper-{k}", "labels": {"vmesh.dev/reaper-slot": str(k),
                                                                        "app.kubernetes.io/managed-by": "vmesh-agent"}},
                  "spec": {"holderIdentity": f"{a.vm}/machine/boot/1", "leaseDurationSeconds": 300}})
    out = kubectl_vmesh(cluster, "revoke", a.vm, "-n", namespace).stdout
    assert f"lease.coordination.k8s.io/vmesh-reaper-3 deleted (a reaper slot {a.vm} held)" in out, out
    assert cluster.get("lease", "vmesh-reaper-4", namespace) is None


def test_install_on_a_fresh_apiserver_returns_only_once_its_rules_are_enforced(cluster: Cluster, namespace: str,
                                                                                tmp_path: Path) -> None:
    """No sleep: the first write after `kubectl vmesh install` is judged by the rules it installed, on an
    apiserver that never had them (deleted, then the apiserver restarted)."""
    a = AsVM(cluster, namespace, f"a-{uuid.uuid4().hex[:4]}")
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        cluster.kubectl("delete", kind, ISOLATION, ENROLLMENT, "--ignore-not-found")
    cluster.stop("kube-apiserver")
    cluster.start("kube-apiserver")
    a.ok(*DRY, input=endpoint_slice(a.vm, "mysqldb", "10.96.0.1"))  # no rules yet
    out = kubectl_vmesh(cluster, "install", "--pod-cidr", "10.244.0.0/16").stdout
    assert f"validatingadmissionpolicy.admissionregistration.k8s.io/{ISOLATION} enforced" in out, out
    assert f"validatingadmissionpolicy.admissionregistration.k8s.io/{ENROLLMENT} enforced at revision" in out, out
    a.denied(f"vmesh-vm-{a.vm} may not publish 10.96.0.1: inside the cluster's Service or Pod ranges", *DRY,
             input=endpoint_slice(a.vm, "mysqldb", "10.96.0.1"), policy=ENROLLMENT)
    a.denied("may publish only unicast IP addresses", *DRY,
             input=endpoint_slice(a.vm, "mysqldb", "198.18.0.1", "239.1.1.1"))  # 127.0.0.1: the apiserver's own 422
