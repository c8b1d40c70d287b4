"""Each backend's pure builders: slice ports and conditions, owned fields, the advertised address."""
from ipaddress import ip_address

from agent.cluster.objects import build_service, missing_service_ports, object_name
from agent.state import Registration
from agent.sync.backends.endpointslice import SLICE_CONTENT, build_endpoint_slice
from agent.sync.backends.externalworkload import build_external_workload
from agent.sync.backends.owned import merge_owned, owned_differs
from agent.sync.backends.workloadentry import build_workload_entry
from agent.sync.backends.workloads import one_address

LEASE = {"metadata": {"name": "vmesh-vm-a", "uid": "u-1"}}


def test_an_admins_target_port_remap_is_followed_not_overridden() -> None:
    """Issue 20: MariaDB moved 3306 → 3307; the admin remapped the Service's port 3306 to targetPort 3307 so that
    clients of mysqldb:3306 keep working. The agent matched by port number only: it added a port 3307 and named
    the slice's port after it, and clients of 3306 were refused. Matched by targetPort, the slice's 3307 carries
    the Service port's name `mysql`, and no port is added."""
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    svc["spec"]["ports"][0]["targetPort"] = 3307  # kubectl patch by the admin
    assert missing_service_ports(svc, [("mysql", 3307)]) == []
    moved = [Registration("mysqldb", 3307, "mysql", ip_address("10.0.0.5"))]
    assert [(p["name"], p["port"]) for p in build_endpoint_slice(svc, "vm-a", "vm", moved, LEASE)["ports"]] == [
        ("mysql", 3307)]
    # A VM not moved yet, in the same fleet: its 3306 is the Service's port by number, nothing added either.
    assert missing_service_ports(svc, [("mysql", 3306)]) == []
    # Without the remap, the move adds a port (and clients of 3306 are not served by this VM any more).
    plain = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    assert [(p["name"], p["port"]) for p in missing_service_ports(plain, [("mysql", 3307)])] == [("mysql-3307", 3307)]


def test_a_port_matched_by_number_gives_way_to_the_remap() -> None:
    """Issue 20: the remap 3306 -> targetPort 3307 names 3307 `mysql`; a VM that still has 3306 (its listener
    vanished and kept not ready for remove_after, or still listening) must not name 3306 `mysql` too: the
    apiserver refuses a slice with two ports of one name (422, `ports[1].name: Duplicate value`)."""
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    svc["spec"]["ports"][0]["targetPort"] = 3307
    regs = [Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"), ready=False),
            Registration("mysqldb", 3307, "mysql", ip_address("10.0.0.5"))]
    ports = [(p["name"], p["port"]) for p in build_endpoint_slice(svc, "vm-a", "vm", regs, LEASE)["ports"]]
    assert ports == [("mysql-3306", 3306), ("mysql", 3307)]


def test_slice_conditions_and_owner() -> None:
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    regs = [Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"), ready=False)]
    s = build_endpoint_slice(svc, "vm-a", "vm", regs, LEASE)
    assert s["metadata"]["name"] == object_name("mysqldb", "vm-a", 4)
    assert s["endpoints"] == [{"addresses": ["10.0.0.5"],
                               "conditions": {"ready": False, "serving": False, "terminating": False}}]
    assert s["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    terminating = build_endpoint_slice(svc, "vm-a", "vm", [regs[0].__class__(*regs[0].__dict__.values())], LEASE,
                                       terminating=True)
    assert terminating["endpoints"][0]["conditions"]["terminating"] is True


def test_slice_differs_ignores_server_fields_but_sees_edits() -> None:
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    regs = [Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"))]
    want = build_endpoint_slice(svc, "vm-a", "vm", regs, LEASE)
    current = {**want, "metadata": {**want["metadata"], "resourceVersion": "7", "uid": "x"}}
    assert not owned_differs(current, want, SLICE_CONTENT)
    edited = {**current, "endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}]}
    assert owned_differs(edited, want, SLICE_CONTENT)


def test_a_write_keeps_what_others_added_and_sets_what_the_agent_owns() -> None:
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    regs = [Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"))]
    want = build_endpoint_slice(svc, "vm-a", "vm", regs, LEASE)
    foreign_owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": "cm-1"}
    current = {**want, "metadata": {
        **want["metadata"], "resourceVersion": "7", "finalizers": ["example.com/keep"],
        "labels": {**want["metadata"]["labels"], "team": "db", "vmesh.dev/vm": "vm-a"},
        "annotations": {"note": "by hand"},
        "ownerReferences": [foreign_owner, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                            "name": "vmesh-vm-a", "uid": "u-0"}]},
        "endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}]}
    assert owned_differs(current, want, SLICE_CONTENT)
    merged = merge_owned(current, want, SLICE_CONTENT)
    assert merged["metadata"]["finalizers"] == ["example.com/keep"]
    assert merged["metadata"]["labels"]["team"] == "db"
    assert merged["metadata"]["annotations"] == {"note": "by hand"}
    assert merged["metadata"]["ownerReferences"] == [foreign_owner, *want["metadata"]["ownerReferences"]]
    assert merged["metadata"]["resourceVersion"] == "7"
    assert merged["endpoints"] == want["endpoints"]
    assert not owned_differs(merged, want, SLICE_CONTENT), "others' additions are no difference"


def test_one_address_per_family_is_the_advertised_one_not_the_lowest() -> None:
    regs = [Registration("mysqldb", 3306, "mysql", ip_address(a)) for a in ("10.0.0.1", "198.18.0.5", "fd00::9")]
    v4 = [r for r in regs if r.family == 4]
    advertised = [ip_address("198.18.0.5"), ip_address("10.0.0.1")]
    assert one_address(v4, advertised)[0] == "198.18.0.5"
    # Not listening on the advertised address: the next candidate in `hostname -I` order it listens on.
    assert one_address(v4, [ip_address("198.18.0.9"), ip_address("fd00::9"), ip_address("10.0.0.1")])[0] == "10.0.0.1"
    assert one_address(v4)[0] == "10.0.0.1", "no order known (deregister, a reaper): the lowest"
    entry = build_workload_entry(svc := build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)]), "vm-a", "vm",
                                 v4, LEASE, preferred=advertised)
    assert entry["spec"]["address"] == "198.18.0.5"
    workload = build_external_workload(svc, "vm-a", "vm", v4, LEASE, identity="i", server_name="s",
                                       preferred=advertised)
    assert workload["spec"]["workloadIPs"] == [{"ip": "198.18.0.5"}]
