"""Desired state: what changed, and what a vanished listener or a lost address leaves registered."""
from ipaddress import ip_address

from agent.state import DesiredState, Registration, VanishTracker


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


def test_desired_state_changes_when_only_the_address_order_does() -> None:
    state = DesiredState()
    reg = Registration("mysqldb", 3306, "mysql", ip_address("10.0.0.5"))
    assert state.replace([reg], preferred=[ip_address("10.0.0.5")])
    assert not state.replace([reg], preferred=[ip_address("10.0.0.5")])
    assert state.replace([reg], preferred=[ip_address("10.0.0.6"), ip_address("10.0.0.5")])
    assert not state.replace([reg]), "no order given: the last one stays"
