"""The cluster objects every backend shares: the Service, object names, Lease times."""
import datetime
import re

from agent.cluster.objects import build_service, micro_time, missing_service_ports, object_name

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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


def test_micro_time_has_six_fraction_digits() -> None:
    t = datetime.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=datetime.UTC)
    assert micro_time(t) == "2026-01-02T03:04:05.000600Z"


def test_object_names_are_unique_per_vm_service_and_family_and_stay_readable() -> None:
    # Joined plainly these collide: VM `a` serving `mysqldb-replica`, VM `replica-a` serving `mysqldb`;
    # `web-v6` on IPv4 and `web` on IPv6.
    assert object_name("mysqldb-replica", "a", 4) != object_name("mysqldb", "replica-a", 4)
    assert object_name("web-v6", "a", 4) != object_name("web", "a", 6)
    assert object_name("mysqldb", "vm-a", 4) == object_name("mysqldb", "vm-a", 4), "stable across runs"
    assert object_name("mysqldb", "vm-a", 4).startswith("mysqldb-vm-a-")
    assert object_name("mysqldb", "vm-a", 6).startswith("mysqldb-vm-a-v6-")
    longest = object_name("s" * 63, "v" * 62 + "-", 6)
    assert len(longest) == 63
    names = {object_name(service, vm, family) for service in ("db", "d", "db-x", "x" * 63)
             for vm in ("x", "x-db", "a" * 63, "a" * 62 + "b") for family in (4, 6)}
    assert len(names) == 32
    assert all(DNS_LABEL.match(name) for name in names | {longest})
