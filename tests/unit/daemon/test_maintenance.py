"""Maintenance mode kept in state_dir/maintenance.json across restarts (agent/daemon/maintenance.py)."""

from __future__ import annotations

from pathlib import Path

from agent.daemon.maintenance import MaintenanceStore


def test_maintenance_survives_a_restart(tmp_path: Path) -> None:
    MaintenanceStore(str(tmp_path)).set("mysqldb", True, "upgrading")
    again = MaintenanceStore(str(tmp_path))
    assert again.reason("mysqldb") == "upgrading" and again.reason("redis") is None and not again.unreadable


def test_an_unreadable_file_holds_every_service_in_maintenance_until_maintenance_is_set_again(tmp_path: Path) -> None:
    """Issue 20: a corrupt maintenance.json was read as empty, so services in maintenance came back ready after a
    restart, in the middle of someone's maintenance."""
    (tmp_path / "maintenance.json").write_text('{"mysqldb": "upgra')  # cut short
    store = MaintenanceStore(str(tmp_path))
    assert "maintenance.json cannot be read" in store.unreadable
    assert store.reason("mysqldb") == store.reason("redis") == store.unreadable
    store.set("mysqldb", False, "")  # the admin says what holds now: the file is whole again
    assert store.reason("mysqldb") is None and store.reason("redis") is None
    assert MaintenanceStore(str(tmp_path)).unreadable == ""
    (tmp_path / "maintenance.json").write_text("[1, 2]")
    assert "not a JSON object" in MaintenanceStore(str(tmp_path)).unreadable
