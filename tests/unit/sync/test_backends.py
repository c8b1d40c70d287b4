"""The endpoints, workloadentry and externalworkload backends without a cluster: shapes, merges, conditions,
and (with a fake API) the bounded retry."""

from __future__ import annotations

import datetime
from ipaddress import ip_address
from typing import Any

import pytest

from agent.cluster.errors import Conflict
from agent.cluster.objects import (
    ANNOTATION_ISTIO_SERVICE_ACCOUNTS,
    build_service,
    build_service_with,
    extend_service,
    named_ports,
    object_name,
)
from agent.logs import get_logger
from agent.state import Registration
from agent.sync.backends.endpoints import (
    EndpointsBackend,
    WantedAddress,
    canonical_subsets,
    lease_owners,
    lease_reference,
    merge_subsets,
    owned_addresses,
    wanted_addresses,
)
from agent.sync.backends.externalworkload import ExternalWorkloadBackend, build_external_workload
from agent.sync.backends.owned import owned_differs
from agent.sync.backends.workloadentry import ANNOTATION_ISTIO_HEALTH_CHECKS, build_workload_entry
from agent.sync.backends.workloads import WORKLOAD_CONTENT, health_of, set_condition
from agent.sync.failures import ServiceFailures

Body = dict[str, Any]
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=1)
MYSQL = [{"name": "mysql", "port": 3306, "protocol": "TCP", "appProtocol": "mysql"}]
MYSQL_X = [*MYSQL, {"name": "tcp-33060", "port": 33060, "protocol": "TCP"}]


def lease(vm: str, uid: str = "") -> Body:
    return {"metadata": {"name": f"vmesh-{vm}", "namespace": "vm", "uid": uid or f"uid-{vm}"}}


def ref(vm: str, uid: str = "") -> Body:
    return lease_reference(lease(vm, uid))


def reg(port: int = 3306, protocol: str = "mysql", address: str = "198.18.1.1", *, ready: bool = True,
        service: str = "mysqldb") -> Registration:
    return Registration(service, port, protocol, ip_address(address), ready=ready)


def ips(subsets: list[Body], field: str = "addresses") -> list[list[str]]:
    return [[e["ip"] for e in s.get(field, [])] for s in subsets]


# --- endpoints: merging subsets ------------------------------------------------------------------------------------

def test_first_address_creates_a_subset_marked_with_the_vms_lease() -> None:
    merged, refused = merge_subsets([], ref("a"), [WantedAddress("198.18.1.1", MYSQL, True)])
    assert refused == []
    assert merged == [{"ports": MYSQL, "addresses": [{"ip": "198.18.1.1", "targetRef": ref("a")}]}]
    assert merged[0]["addresses"][0]["targetRef"] == {
        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "namespace": "vm", "name": "vmesh-a", "uid": "uid-a"}


def test_addresses_join_the_subset_of_their_port_set_and_a_new_port_set_gets_its_own() -> None:
    subsets, _ = merge_subsets([], ref("a"), [WantedAddress("198.18.1.1", MYSQL, True)])
    subsets, _ = merge_subsets(subsets, ref("b"), [WantedAddress("198.18.1.2", MYSQL, True)])
    subsets, _ = merge_subsets(subsets, ref("c"), [WantedAddress("198.18.1.3", MYSQL_X, True)])
    assert [s["ports"] for s in subsets] == [MYSQL, MYSQL_X]
    assert ips(subsets) == [["198.18.1.1", "198.18.1.2"], ["198.18.1.3"]]


def test_port_sets_match_by_name_port_and_protocol_not_order_or_app_protocol() -> None:
    istioctl = [{"ports": [{"name": "mysql", "port": 3306}], "addresses": [{"ip": "10.1.1.1"}]}]
    merged, _ = merge_subsets(istioctl, ref("a"), [WantedAddress("198.18.1.1", MYSQL, True)])
    assert len(merged) == 1
    assert ips(merged) == [["10.1.1.1", "198.18.1.1"]]


def test_merging_again_changes_nothing_and_never_duplicates() -> None:
    wanted = [WantedAddress("198.18.1.1", MYSQL, True)]
    once, _ = merge_subsets([], ref("a"), wanted)
    twice, _ = merge_subsets(once, ref("a"), wanted)
    assert twice == once
    assert canonical_subsets(twice) == once


def test_an_ip_another_owner_holds_in_the_subset_is_not_added_again() -> None:
    subsets, _ = merge_subsets([], ref("a"), [WantedAddress("198.18.1.1", MYSQL, False)])
    merged, refused = merge_subsets(subsets, ref("b"), [WantedAddress("198.18.1.1", MYSQL, True)])
    assert refused == ["198.18.1.1"]
    assert merged == subsets  # a's entry, not ready, untouched
    unmarked = [{"ports": MYSQL, "addresses": [{"ip": "198.18.1.1"}]}]
    merged, refused = merge_subsets(unmarked, ref("b"), [WantedAddress("198.18.1.1", MYSQL, True)])
    assert refused == ["198.18.1.1"]
    assert ips(merged) == [["198.18.1.1"]]


def test_not_ready_goes_to_not_ready_addresses_and_back() -> None:
    subsets, _ = merge_subsets([], ref("a"), [WantedAddress("198.18.1.1", MYSQL, True)])
    subsets, _ = merge_subsets(subsets, ref("b"), [WantedAddress("198.18.1.2", MYSQL, True)])
    failing, _ = merge_subsets(subsets, ref("a"), [WantedAddress("198.18.1.1", MYSQL, False)])
    assert ips(failing) == [["198.18.1.2"]]
    assert ips(failing, "notReadyAddresses") == [["198.18.1.1"]]
    assert owned_addresses(failing, "vmesh-a") == {"198.18.1.1": False}
    recovered, _ = merge_subsets(failing, ref("a"), [WantedAddress("198.18.1.1", MYSQL, True)])
    assert recovered == canonical_subsets(subsets)


def test_removing_takes_only_this_vms_entries_and_drops_empty_subsets() -> None:
    subsets = [
        {"ports": MYSQL, "addresses": [{"ip": "10.9.9.9"},  # somebody's, unmarked (istioctl register)
                                       {"ip": "198.18.1.2", "targetRef": ref("b")},
                                       {"ip": "198.18.1.1", "targetRef": ref("a")}]},
        {"ports": MYSQL_X, "notReadyAddresses": [{"ip": "198.18.1.1", "targetRef": ref("a")}]},
        {"ports": MYSQL_X, "addresses": [{"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "vmesh-a"}}]},
    ]
    merged, _ = merge_subsets(subsets, ref("a"), [])
    assert ips(merged) == [["10.9.9.9", "198.18.1.2"], ["10.0.0.1"]]
    assert owned_addresses(merged, "vmesh-a") == {}


def test_ownership_is_by_lease_name_so_a_new_lease_takes_over_the_vms_old_entries() -> None:
    old, _ = merge_subsets([], ref("a", "old-uid"), [WantedAddress("198.18.1.1", MYSQL, True)])
    new, _ = merge_subsets(old, ref("a", "new-uid"), [WantedAddress("198.18.1.1", MYSQL, True)])
    assert [e["targetRef"]["uid"] for e in new[0]["addresses"]] == ["new-uid"]


def test_moving_to_another_port_set_leaves_the_old_subset() -> None:
    subsets, _ = merge_subsets([], ref("a"), [WantedAddress("198.18.1.1", MYSQL, True)])
    moved, _ = merge_subsets(subsets, ref("a"), [WantedAddress("198.18.1.1", MYSQL_X, True)])
    assert [s["ports"] for s in moved] == [MYSQL_X]


def test_entries_of_dead_leases_are_forgotten_exactly() -> None:
    subsets = [{"ports": MYSQL, "addresses": [
        {"ip": "198.18.1.2", "targetRef": ref("b", "dead")},
        {"ip": "198.18.1.3", "targetRef": ref("c", "alive")},
        {"ip": "198.18.1.4", "targetRef": ref("b", "reborn")},  # b came back with a new Lease: keep
    ]}]
    assert lease_owners(subsets) == {("vmesh-b", "dead"), ("vmesh-c", "alive"), ("vmesh-b", "reborn")}
    merged, _ = merge_subsets(subsets, ref("a"), [], forget={("vmesh-b", "dead")})
    assert ips(merged) == [["198.18.1.3", "198.18.1.4"]]


def test_wanted_addresses_follow_the_service_port_names_and_need_every_port_ready() -> None:
    svc = {"spec": {"ports": [{"name": "db", "port": 3306}]}}  # named by someone else
    wanted = wanted_addresses(svc, [reg(), reg(33060, "tcp", ready=False), reg(address="198.18.1.9")])
    assert wanted == [
        WantedAddress("198.18.1.1", [{"name": "db", "port": 3306, "protocol": "TCP", "appProtocol": "mysql"},
                                     {"name": "tcp-33060", "port": 33060, "protocol": "TCP"}], False),
        WantedAddress("198.18.1.9", [{"name": "db", "port": 3306, "protocol": "TCP", "appProtocol": "mysql"}], True),
    ]
    assert all(not w.ready for w in wanted_addresses(svc, [reg()], terminating=True))


# --- the shared Service --------------------------------------------------------------------------------------------

def test_service_gets_istios_service_account_annotation_only_when_configured() -> None:
    svc = build_service_with("mysqldb", "vm", "a", [("mysql", 3306)], service_account="vm-sa")
    assert svc["metadata"]["annotations"][ANNOTATION_ISTIO_SERVICE_ACCOUNTS] == "vm-sa"
    assert "selector" not in svc["spec"]
    plain = build_service_with("mysqldb", "vm", "a", [("mysql", 3306)])
    assert ANNOTATION_ISTIO_SERVICE_ACCOUNTS not in plain["metadata"]["annotations"]


def test_extending_a_service_adds_ports_and_service_accounts_and_nothing_twice() -> None:
    svc = build_service_with("mysqldb", "vm", "a", [("mysql", 3306)], service_account="sa-a")
    updated, changes = extend_service(svc, [("mysql", 3306), ("tcp", 33060)], service_account="sa-b")
    assert changes == ["ports tcp-33060", "service account sa-b"]
    assert updated["metadata"]["annotations"][ANNOTATION_ISTIO_SERVICE_ACCOUNTS] == "sa-a,sa-b"
    assert [p["port"] for p in updated["spec"]["ports"]] == [3306, 33060]
    assert [p["port"] for p in svc["spec"]["ports"]] == [3306], "the input is not modified"
    assert extend_service(updated, [("mysql", 3306)], service_account="sa-a")[1] == []


def test_a_selector_is_added_only_to_our_own_selectorless_service() -> None:
    ours = build_service("mysqldb", "vm", "a", [("mysql", 3306)])
    updated, changes = extend_service(ours, [("mysql", 3306)], selector={"app": "mysqldb"})
    assert updated["spec"]["selector"] == {"app": "mysqldb"}
    assert changes == ["selector app=mysqldb"]
    theirs = {"metadata": {"name": "mysqldb"}, "spec": {"ports": [{"name": "mysql", "port": 3306}]}}
    assert extend_service(theirs, [("mysql", 3306)], selector={"app": "mysqldb"})[1] == []
    other = {**ours, "spec": {**ours["spec"], "selector": {"app": "legacy"}}}
    assert extend_service(other, [("mysql", 3306)], selector={"app": "mysqldb"})[1] == []


def test_named_ports_keep_an_unnamed_service_port_unnamed() -> None:
    svc = {"spec": {"ports": [{"port": 3306}]}}
    assert named_ports(svc, [("mysql", 3306)])[0]["name"] == ""


# --- WorkloadEntry and ExternalWorkload ------------------------------------------------------------------------

def test_workload_entry_shape() -> None:
    svc = build_service_with("mysqldb", "vm", "a", [("mysql", 3306), ("tcp", 33060)], selector={"app": "mysqldb"})
    entry = build_workload_entry(svc, "a", "vm", [reg(), reg(33060, "tcp")], lease("a"),
                                 service_account="vm-sa", network="vms")
    assert entry["apiVersion"] == "networking.istio.io/v1"
    assert entry["metadata"]["name"] == object_name("mysqldb", "a", 4)
    assert entry["metadata"]["labels"] == {"app": "mysqldb", "vmesh.dev/vm": "a",
                                           "app.kubernetes.io/managed-by": "vmesh-agent"}
    assert entry["metadata"]["annotations"] == {ANNOTATION_ISTIO_HEALTH_CHECKS: "true"}
    assert entry["metadata"]["ownerReferences"] == [
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "vmesh-a", "uid": "uid-a"}]
    assert entry["spec"] == {"address": "198.18.1.1", "ports": {"mysql": 3306, "tcp-33060": 33060},
                             "labels": {"app": "mysqldb", "vmesh.dev/vm": "a"},
                             "serviceAccount": "vm-sa", "network": "vms"}
    bare = build_workload_entry(svc, "a", "vm", [reg()], lease("a"))
    assert "serviceAccount" not in bare["spec"]
    assert "network" not in bare["spec"]


def test_one_address_per_object_and_family() -> None:
    svc = build_service("mysqldb", "vm", "a", [("mysql", 3306)])
    entry = build_workload_entry(svc, "a", "vm", [reg(address="198.18.1.9"), reg(address="198.18.1.10")], lease("a"))
    assert entry["spec"]["address"] == "198.18.1.9"
    v6 = build_workload_entry(svc, "a", "vm", [reg(address="fd00::5")], lease("a"))
    assert v6["metadata"]["name"] == object_name("mysqldb", "a", 6)
    assert v6["spec"]["address"] == "fd00::5"


def test_external_workload_shape_and_mesh_tls_templates() -> None:
    svc = build_service_with("mysqldb", "vm", "a", [("mysql", 3306)], selector={"app": "mysqldb"})
    identity, server_name = ExternalWorkloadBackend(None, "vm", "a", None, None).mesh_tls("mysqldb")  # type: ignore[arg-type]
    assert (identity, server_name) == ("spiffe://root.linkerd.cluster.local/a", "a.cluster.local")
    workload = build_external_workload(svc, "a", "vm", [reg()], lease("a"), identity=identity,
                                       server_name=server_name)
    assert workload["apiVersion"] == "workload.linkerd.io/v1beta1"
    assert workload["metadata"]["name"] == object_name("mysqldb", "a", 4)
    assert workload["metadata"]["labels"]["app"] == "mysqldb"
    assert workload["metadata"]["ownerReferences"][0]["uid"] == "uid-a"
    assert workload["spec"] == {
        "meshTLS": {"identity": "spiffe://root.linkerd.cluster.local/a", "serverName": "a.cluster.local"},
        "ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}],
        "workloadIPs": [{"ip": "198.18.1.1"}],
    }
    custom = ExternalWorkloadBackend(None, "ns1", "a", None, None,  # type: ignore[arg-type]
                                     identity="spiffe://example.org/{namespace}/{service}/{vm}")
    assert custom.mesh_tls("db")[0] == "spiffe://example.org/ns1/db/a"
    with pytest.raises(ValueError, match=r"only \{vm\}, \{namespace\} and \{service\}"):
        ExternalWorkloadBackend(None, "ns1", "a", None, None, server_name="{host}.local")  # type: ignore[arg-type]


def test_workload_differs_ignores_server_fields_and_foreign_labels_but_sees_edits() -> None:
    svc = build_service("mysqldb", "vm", "a", [("mysql", 3306)])
    want = build_workload_entry(svc, "a", "vm", [reg()], lease("a"))
    current = {**want, "metadata": {**want["metadata"], "resourceVersion": "9", "uid": "x",
                                    "labels": {**want["metadata"]["labels"], "team": "db"}},
               "status": {"conditions": []}}
    assert not owned_differs(current, want, WORKLOAD_CONTENT)
    assert owned_differs({**current, "spec": {**want["spec"], "address": "10.0.0.1"}}, want, WORKLOAD_CONTENT)
    assert owned_differs(current, build_workload_entry(svc, "a", "vm", [reg()], lease("a", "new")), WORKLOAD_CONTENT)


# --- health as a status condition --------------------------------------------------------------------------------

def test_health_summary() -> None:
    assert health_of([reg()], "a") == (True, "HealthCheckPassing", "health checks pass on a")
    assert health_of([reg(), reg(33060, "tcp", ready=False)], "a") == (
        False, "HealthCheckFailing", "health checks fail on a: 33060/tcp")
    assert health_of([reg()], "a", terminating=True)[:2] == (False, "Terminating")


def test_condition_transition_time_moves_only_when_the_status_flips() -> None:
    others = [{"type": "Reconciled", "status": "True"}]
    healthy = set_condition(others, "Healthy", healthy=True, reason="HealthCheckPassing", message="ok", now=NOW)
    assert healthy == [others[0], {"type": "Healthy", "status": "True", "reason": "HealthCheckPassing",
                                   "message": "ok", "lastTransitionTime": "2026-03-04T05:06:07Z"}]
    assert set_condition(healthy, "Healthy", healthy=True, reason="HealthCheckPassing", message="ok",
                         now=LATER) is None
    failing = set_condition(healthy, "Healthy", healthy=False, reason="HealthCheckFailing", message="x", now=LATER)
    assert failing is not None
    assert failing[1]["lastTransitionTime"] == "2026-03-04T05:07:07Z"
    assert failing[0] == others[0]
    terminating = set_condition(failing, "Healthy", healthy=False, reason="Terminating", message="bye", now=NOW)
    assert terminating is not None
    assert terminating[1]["reason"] == "Terminating"
    assert terminating[1]["lastTransitionTime"] == "2026-03-04T05:07:07Z", "same status: the transition stays"


# --- endpoints: the retry bound, sequenced with a fake API ---------------------------------------------------------

class AlwaysModified:
    """An Endpoints that somebody else changes between every read and write."""

    def __init__(self) -> None:
        self.replaces = 0
        self.body = {"metadata": {"name": "mysqldb", "resourceVersion": "1"},
                     "subsets": [{"ports": MYSQL, "addresses": [{"ip": "198.18.1.1", "targetRef": ref("a")}]}]}

    async def list(self, resource: object, namespace: str, label_selector: str = "") -> list[Body]:
        return [self.body]

    async def get(self, resource: object, namespace: str, name: str) -> Body:
        return self.body

    async def replace(self, resource: object, namespace: str, name: str, body: Body) -> Body:
        self.replaces += 1
        raise Conflict("the object has been modified", status=409, reason="Conflict")


async def test_endpoints_retry_a_bounded_number_of_times_then_say_so() -> None:
    kube = AlwaysModified()
    backend = EndpointsBackend(kube, "vm", "a", None, get_logger(), attempts=3)  # type: ignore[arg-type]
    with pytest.raises(ServiceFailures, match="service mysqldb: endpoints/mysqldb kept changing under us"):
        await backend.remove_all()
    assert kube.replaces == 3
