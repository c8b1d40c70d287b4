"""Which listeners become registrations, and why. Pure: no I/O, so every rule is unit-tested."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agent.discovery.addresses import IPAddress
from agent.discovery.listeners import Listener
from agent.protocols import DISCOVERABLE, WELL_KNOWN_PORTS

# Ports probed for each protocol; a probe must confirm the protocol before anything is registered.


@dataclass(frozen=True)
class ListenerDecision:
    listener: Listener
    protocol: str  # what the probe found: "mysql", ..., or "unknown"
    register: bool
    service: str
    address: IPAddress | None  # the address to register, when register is True
    reason: str
    likely: str = ""  # the protocol its port is well known for, when it was not probed; "" otherwise


def is_reachable(listener: Listener, local: Collection[IPAddress] | None) -> bool:
    """False for a socket bound to one specific address that is not the VM's (`local`; None: not known)."""
    if local is None or listener.is_wildcard or listener.is_loopback:
        return True
    return listener.ip in local


def loopback_only(listener: Listener) -> str:
    return (f"loopback only: bound to {listener.address}, unreachable from other hosts (not probed); "
            "make it listen on 0.0.0.0 or the VM address (MySQL/MariaDB: bind-address = 0.0.0.0)")


def allow_hint(protocol: str, allow: Mapping[str, str]) -> str:
    """What to write in the config to register `protocol`, in the config's own syntax."""
    entries = ", ".join(f'{p} = "{name}"' for p, name in {**allow, protocol: "<service>"}.items())
    return (f'{protocol} is not in discovery.allow; add {protocol} = "<service>" to register it: '
            f"[discovery] allow = {{ {entries} }}")


def _not_probed(port: int, allow: Mapping[str, str]) -> str:
    likely = WELL_KNOWN_PORTS.get(port)
    if likely is not None:
        return f"not probed (port {port} is {likely}'s): {allow_hint(likely, allow)}"
    if "mysql" not in allow:
        return ("not probed: only mysql is looked for on any port, and it is not in discovery.allow; "
                "declare it as a [[service]] to register it")
    return "not probed; declare it as a [[service]] to register it"


def decide(
    listener: Listener, protocol: str, allow: Mapping[str, str], advertised: IPAddress | None,
    *, local: Collection[IPAddress] | None = None, unsettled: str = "", probed: bool = True,
) -> ListenerDecision:
    """`local`: the VM's addresses (`hostname -I`), None when not known; `unsettled`: why the probe could not
    tell the protocol yet (it is tried again), "" when its answer is final; `probed`: False when the socket
    was not connected to (`protocol` is then "unknown" and the port names the likely one)."""
    service = allow.get(protocol, "")
    likely = "" if probed else WELL_KNOWN_PORTS.get(listener.port, "")

    def skip(reason: str) -> ListenerDecision:
        return ListenerDecision(listener, protocol, False, service, None, reason, likely)

    if not is_reachable(listener, local):
        # The kernel keeps a socket bound to an address that was removed from the VM;
        # nothing reaches it there.
        return skip(f"bound to {listener.address}, which is not an address of this VM (any more)")
    if listener.is_loopback and not probed:
        # Never connected to (the socket table says enough): a loopback listener cannot be registered.
        return skip(loopback_only(listener))
    if unsettled:
        return skip(unsettled)
    if not probed:
        return skip(_not_probed(listener.port, allow))
    if protocol == "unknown":
        return skip("protocol not recognised; declare it as a [[service]] to register it")
    if protocol not in DISCOVERABLE:
        return skip(f"{protocol} is never registered by discovery; declare it as a [[service]] "
                    "to register it")
    if not service:
        return skip(allow_hint(protocol, allow))
    if listener.is_loopback:
        return skip(loopback_only(listener))
    if listener.is_wildcard:
        if advertised is None:
            return skip("no VM address to advertise")
        bound_v4 = ipaddress.ip_address(listener.address).version == 4
        if bound_v4 and advertised.version != 4:
            return skip(f"bound to IPv4 {listener.address} but the advertised address {advertised} is IPv6")
        return ListenerDecision(listener, protocol, True, service, advertised,
                                f"listens on every address; registered at {advertised}")
    bound = listener.ip
    return ListenerDecision(listener, protocol, True, service, bound,
                            f"listens on {bound} only; registered there")
