import datetime
from ipaddress import ip_address

from agent.cluster.objects import (
    build_endpoint_slice,
    build_service,
    micro_time,
    missing_service_ports,
    slice_differs,
)
from agent.state import DesiredState, Registration, VanishTracker

LEASE = {"metadata": {"name": "vmesh-vm-a", "uid": "u-1"}}


def test_service_is_selectorless_with_protocol_port_names() -> None:
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306), ("tcp", 9000)])
    assert "selector" not in svc["spec"]
    assert [(p["name"], p["port"], p.get("appProtocol")) for p in svc["spec"]["ports"]] == [
        ("mysql", 3306, "mysql"), ("tcp-9000", 9000, None)
    ]


def test_missing_ports_do_not_clash_with_existing_names() -> None:
    svc = build_service("web", "vm", "vm-a", [("http", 80)])
    missing = missing_service_ports(svc, [("http", 80), ("http", 8080)])
    assert [(p["name"], p["port"]) for p in missing] == [("http-8080", 8080)]


def test_slice_conditions_and_owner() -> None:
    svc = build_service("mysqldb", "vm", "vm-a", [("mysql", 3306)])
    regs = [Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"), ready=False)]
    s = build_endpoint_slice(svc, "vm-a", "vm", regs, LEASE)
    assert s["metadata"]["name"] == "mysqldb-vm-a"
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
    assert not slice_differs(current, want)
    edited = {**current, "endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}]}
    assert slice_differs(edited, want)


def test_micro_time_has_six_fraction_digits() -> None:
    t = datetime.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=datetime.UTC)
    assert micro_time(t) == "2026-01-02T03:04:05.000600Z"


def test_desired_state_reports_changes() -> None:
    state = DesiredState()
    reg = Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"))
    assert state.replace([reg])
    assert not state.replace([reg])
    assert state.replace([])


def test_vanished_registration_is_not_ready_then_dropped_after_grace() -> None:
    now = [100.0]
    tracker = VanishTracker(grace=30, clock=lambda: now[0])
    vm = ip_address("10.0.0.5")
    reg = Registration("mysqldb", 3306, "mysql", vm)
    assert tracker.update([reg], [vm]) == [reg]
    now[0] += 1
    assert tracker.update([], [vm]) == [Registration("mysqldb", 3306, "mysql", vm, ready=False)]
    now[0] += 29.5
    assert tracker.update([], [vm]) == [Registration("mysqldb", 3306, "mysql", vm, ready=False)]
    now[0] += 1
    assert tracker.update([], [vm]) == []


def test_port_change_keeps_old_port_not_ready_and_returning_server_is_ready_again() -> None:
    now = [0.0]
    tracker = VanishTracker(grace=30, clock=lambda: now[0])
    vm = ip_address("10.0.0.5")
    old, new = Registration("mysqldb", 3306, "mysql", vm), Registration("mysqldb", 3307, "mysql", vm)
    tracker.update([old], [vm])
    assert sorted(tracker.update([new], [vm])) == sorted([new, Registration("mysqldb", 3306, "mysql", vm, ready=False)])
    assert sorted(tracker.update([old, new], [vm])) == sorted([old, new])


def test_registration_at_an_address_the_vm_lost_is_dropped_at_once() -> None:
    tracker = VanishTracker(grace=30, clock=lambda: 0.0)
    old_ip, new_ip = ip_address("10.0.0.5"), ip_address("10.0.0.6")
    tracker.update([Registration("mysqldb", 3306, "mysql", old_ip)], [old_ip])
    new = Registration("mysqldb", 3306, "mysql", new_ip)
    assert tracker.update([new], [new_ip]) == [new]
