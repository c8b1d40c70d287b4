from ipaddress import ip_address

from agent.discovery.listeners import Listener
from agent.discovery.policy import decide

ALLOW = {"mysql": "mysqldb"}
VM = ip_address("10.0.0.5")


def test_wildcard_registers_at_the_advertised_address() -> None:
    d = decide(Listener("0.0.0.0", 3306), "mysql", ALLOW, VM)
    assert (d.register, d.service, d.address) == (True, "mysqldb", VM)


def test_specific_address_registers_there() -> None:
    d = decide(Listener("10.0.0.7", 3306), "mysql", ALLOW, VM)
    assert (d.register, d.address) == (True, ip_address("10.0.0.7"))


def test_loopback_is_skipped_with_the_fix() -> None:
    for bound in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        d = decide(Listener(bound, 3306), "mysql", ALLOW, VM)
        assert not d.register
        assert "bind-address" in d.reason


def test_unknown_and_not_allowed_are_never_registered() -> None:
    assert not decide(Listener("0.0.0.0", 22), "unknown", ALLOW, VM).register
    assert not decide(Listener("0.0.0.0", 6379), "redis", ALLOW, VM).register
    assert not decide(Listener("0.0.0.0", 3306), "mysql", ALLOW, None).register
