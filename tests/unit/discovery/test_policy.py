import tomllib
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


def test_a_well_known_port_not_probed_names_its_likely_protocol_and_how_to_allow_it() -> None:
    for port, likely in ((5432, "postgres"), (6379, "redis"), (8080, "http"), (80, "http")):
        d = decide(Listener("0.0.0.0", port), "unknown", ALLOW, VM, probed=False)
        assert (d.register, d.protocol, d.likely) == (False, "unknown", likely)
        assert d.reason == (f"not probed (port {port} is {likely}'s): {likely} is not in discovery.allow; "
                            f'add {likely} = "<service>" to register it: '
                            f'[discovery] allow = {{ mysql = "mysqldb", {likely} = "<service>" }}')


def test_the_allow_hint_is_valid_toml_that_keeps_what_is_allowed() -> None:
    d = decide(Listener("0.0.0.0", 6379), "unknown", {}, VM, probed=False)
    assert d.reason.endswith('[discovery] allow = { redis = "<service>" }')
    d = decide(Listener("0.0.0.0", 6379), "unknown", {"mysql": "db", "http": "web"}, VM, probed=False)
    table = tomllib.loads(d.reason.split(": ", 2)[2].replace("[discovery] ", "[discovery]\n"))
    assert table == {"discovery": {"allow": {"mysql": "db", "http": "web", "redis": "<service>"}}}


def test_an_identified_protocol_that_is_not_allowed_says_how_to_allow_it() -> None:
    d = decide(Listener("0.0.0.0", 3306), "mysql", {"postgres": "pg"}, VM)
    assert (d.register, d.likely) == (False, "")
    assert d.reason == ('mysql is not in discovery.allow; add mysql = "<service>" to register it: '
                        '[discovery] allow = { postgres = "pg", mysql = "<service>" }')


def test_ssh_is_never_offered_for_the_allow_list() -> None:
    d = decide(Listener("0.0.0.0", 22), "ssh", ALLOW, VM)
    assert d.reason == "ssh is never registered by discovery; declare it as a [[service]] to register it"


def test_an_unknown_port_not_probed_says_why() -> None:
    d = decide(Listener("0.0.0.0", 9000), "unknown", {"redis": "cache"}, VM, probed=False)
    assert (d.register, d.likely) == (False, "")
    assert d.reason == ("not probed: only mysql is looked for on any port, and it is not in discovery.allow; "
                        "declare it as a [[service]] to register it")
    probed = decide(Listener("0.0.0.0", 9000), "unknown", ALLOW, VM)
    assert probed.reason == "protocol not recognised; declare it as a [[service]] to register it"


def test_an_unreachable_address_wins_over_the_likely_protocol() -> None:
    d = decide(Listener("10.0.0.8", 5432), "unknown", ALLOW, VM, local={VM}, probed=False)
    assert d.reason == "bound to 10.0.0.8, which is not an address of this VM (any more)"


def test_a_loopback_listener_not_probed_is_said_loopback_only() -> None:
    """etcd on 127.0.0.1:2379: never connected to (discovery does not probe loopback listeners)."""
    d = decide(Listener("127.0.0.1", 2379), "unknown", ALLOW, VM, probed=False)
    assert not d.register
    assert d.reason.startswith("loopback only: bound to 127.0.0.1, unreachable from other hosts (not probed)")


def test_an_ipv4_mapped_listener_registers_at_its_ipv4_address() -> None:
    """Issue 20: Java binds `::ffff:10.0.0.5` on an IPv6 socket; it was skipped as "not an address of this VM"."""
    d = decide(Listener("::ffff:10.0.0.5", 3306), "mysql", ALLOW, VM, local={VM})
    assert (d.register, d.address, d.reason) == (True, VM, "listens on 10.0.0.5 only; registered there")
