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


def test_a_specific_address_that_is_not_the_vms_is_skipped_saying_so() -> None:
    local = {VM, ip_address("10.0.0.7")}
    assert decide(Listener("10.0.0.7", 3306), "mysql", ALLOW, VM, local=local).register
    d = decide(Listener("10.0.0.8", 3306), "mysql", ALLOW, VM, local=local)
    assert not d.register
    assert d.reason == "bound to 10.0.0.8, which is not an address of this VM (any more)"
    assert decide(Listener("0.0.0.0", 3306), "mysql", ALLOW, VM, local=local).register


def test_an_unsettled_probe_says_why_and_registers_nothing() -> None:
    d = decide(Listener("0.0.0.0", 3306), "unknown", ALLOW, VM, unsettled="no greeting within 1 s; will retry")
    assert (d.register, d.reason) == (False, "no greeting within 1 s; will retry")
