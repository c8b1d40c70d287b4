from ipaddress import ip_address

from agent.discovery.addresses import Candidate, choose_address


def cands(*pairs: tuple[str, str]) -> list[Candidate]:
    return [Candidate(iface, ip_address(addr)) for iface, addr in pairs]


HOST = cands(("docker0", "172.17.0.1"), ("eth0", "10.0.0.5"), ("eth1", "192.168.1.5"), ("eth0", "2001:db8::5"))


def test_first_non_virtual_address_with_reason() -> None:
    choice = choose_address(HOST)
    assert choice.address == ip_address("10.0.0.5")
    assert "skipped docker0" in choice.reason


def test_explicit_address_wins() -> None:
    choice = choose_address(HOST, address="192.168.1.5", interface="eth0")
    assert choice.address == ip_address("192.168.1.5")
    assert choice.interface == "eth1"


def test_interface_then_cidr() -> None:
    assert choose_address(HOST, interface="eth1").address == ip_address("192.168.1.5")
    assert choose_address(HOST, cidr="2001:db8::/64").address == ip_address("2001:db8::5")


def test_no_match_is_explained() -> None:
    assert choose_address(HOST, interface="eth9").address is None
    assert "eth9" in choose_address(HOST, interface="eth9").reason
    assert choose_address([]).address is None
    only_docker = choose_address(cands(("docker0", "172.17.0.1")))
    assert only_docker.address is None
    assert "address.interface" in only_docker.reason
