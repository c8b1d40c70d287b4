"""The one protocol table: each protocol the agent knows, with what every room needs to know of it.

Discovery reads which ports a protocol is expected on and whether its client speaks first (then it is probed
only on those ports, and only when allowed: an unknown service never receives foreign bytes); the config
reads which names `discovery.allow` and `[[service]].protocol` accept; the checks read which check a service
gets with check type "auto"; the cluster objects read the port's appProtocol; `kubectl vmesh enroll` reads
the protocol a declared port implies. The probes themselves are registered by name in
agent/discovery/identify.py. Standard library only: the config layer imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    name: str
    ports: tuple[int, ...]  # its well-known ports
    client_first: bool  # the client speaks first (a request is sent); else the server greets
    app_protocol: str  # the Service and EndpointSlice port's appProtocol; "" for none
    check: str  # the check a service of this protocol gets with check type "auto"
    discoverable: bool = True  # a probe can find it; "tcp" is for declared services only


KNOWN: dict[str, Protocol] = {p.name: p for p in (
    Protocol("mysql", (3306,), client_first=False, app_protocol="mysql", check="mysql"),
    Protocol("postgres", (5432,), client_first=True, app_protocol="postgresql", check="tcp"),
    Protocol("redis", (6379,), client_first=True, app_protocol="redis", check="tcp"),
    Protocol("http", (80, 8080), client_first=True, app_protocol="http", check="http"),
    Protocol("tcp", (), client_first=False, app_protocol="", check="tcp", discoverable=False),
)}
NAMES = tuple(KNOWN)  # what the config accepts, in this order in its messages
DISCOVERABLE = frozenset(p.name for p in KNOWN.values() if p.discoverable)  # what `discovery.allow` may name
WELL_KNOWN_PORTS = {port: p.name for p in KNOWN.values() for port in p.ports}


def by_port(port: int) -> str:
    """The protocol a port implies (a declared service's, when none is given): "tcp" for any other port."""
    return WELL_KNOWN_PORTS.get(port, "tcp")


def app_protocol(name: str) -> str:
    """The port's appProtocol; "" for none (plain TCP, or a protocol the agent does not know)."""
    known = KNOWN.get(name)
    return known.app_protocol if known else ""


def auto_check(name: str) -> str:
    """The check kind type "auto" picks: the protocol's own check where there is one, else a TCP connect."""
    known = KNOWN.get(name)
    return known.check if known else "tcp"
