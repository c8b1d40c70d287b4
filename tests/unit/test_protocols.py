"""The one protocol table (agent/protocols.py) says what the six tables it replaced said, and has a probe for
every protocol whose client speaks first."""

from __future__ import annotations

from agent import protocols
from agent.cluster.objects import service_port
from agent.config import PROTOCOLS, CheckSettings
from agent.discovery.identify import CLIENT_FIRST
from agent.plugin.bundle import DeclaredService


def test_the_table_answers_as_the_tables_it_replaced() -> None:
    assert protocols.WELL_KNOWN_PORTS == {3306: "mysql", 5432: "postgres", 6379: "redis", 80: "http", 8080: "http"}
    assert PROTOCOLS == ("mysql", "postgres", "redis", "http", "tcp")
    assert {"mysql", "postgres", "redis", "http"} == protocols.DISCOVERABLE
    auto = CheckSettings()
    assert {p: auto.kind_for(p) for p in PROTOCOLS} == {"mysql": "mysql", "postgres": "tcp", "redis": "tcp",
                                                         "http": "http", "tcp": "tcp"}
    assert service_port("postgres", 5432)["appProtocol"] == "postgresql"
    assert service_port("tcp", 9000) == {"name": "tcp-9000", "port": 9000, "targetPort": 9000, "protocol": "TCP"}
    assert [DeclaredService("x", p).protocol for p in (3306, 8080, 9000)] == ["mysql", "http", "tcp"]


def test_every_client_first_protocol_has_its_probe_registered_by_name() -> None:
    assert set(CLIENT_FIRST) == {p.name for p in protocols.KNOWN.values() if p.client_first}
