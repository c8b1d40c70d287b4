from ipaddress import ip_address

from agent.discovery.addresses import AddressChoice, Candidate
from agent.discovery.listeners import Listener
from agent.discovery.policy import decide
from agent.discovery.render import report_json, report_table
from agent.discovery.scanner import DiscoveryReport

VM = ip_address("10.0.0.5")
ALLOW = {"mysql": "mysqldb"}


def report() -> DiscoveryReport:
    choice = AddressChoice(VM, "eth0", "first address", (Candidate("eth0", VM),))
    pg = Listener("0.0.0.0", 5432, 11)
    db = Listener("0.0.0.0", 3306, 12)
    return DiscoveryReport(choice, (decide(pg, "unknown", ALLOW, VM, probed=False), decide(db, "mysql", ALLOW, VM)),
                           {11: "postgres", 12: "mariadbd"})


def test_the_table_marks_a_protocol_guessed_from_the_port() -> None:
    rows = {line.split()[0]: line.split()[:5] for line in report_table(report()).splitlines()[3:]}
    assert rows["0.0.0.0:5432"] == ["0.0.0.0:5432", "postgres?", "postgres", "skip", "-"]
    assert rows["0.0.0.0:3306"] == ["0.0.0.0:3306", "mysql", "mariadbd", "register", "mysqldb"]


def test_json_keeps_protocol_for_what_a_probe_found_and_names_the_likely_one_apart() -> None:
    pg, db = report_json(report())["listeners"]
    assert (pg["protocol"], pg["likely_protocol"], pg["decision"]) == ("unknown", "postgres", "skip")
    assert pg["reason"].startswith("not probed (port 5432 is postgres's): postgres is not in discovery.allow")
    assert (db["protocol"], db["likely_protocol"]) == ("mysql", None)
