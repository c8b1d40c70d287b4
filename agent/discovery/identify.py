"""What one listener speaks, found by one probe; silence is never taken for an answer.

A server-speaks-first read (MySQL greeting, SSH banner) is tried on any port when MySQL is allowed, so MySQL
on a non-standard port is found; protocols where the client speaks first (PostgreSQL, Redis, HTTP) are only
probed on their well-known ports and only when allowed, so unknown services never receive foreign bytes. The
well-known port of a client-speaks-first protocol that is not allowed is not even connected to: that server
would only sit silent until the greeting read timed out, again and again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.discovery.listeners import Listener
from agent.discovery.probes import banner, http, mysql, postgres, redis
from agent.protocols import KNOWN, WELL_KNOWN_PORTS


@dataclass(frozen=True)
class Identity:
    protocol: str  # "mysql", "postgres", "redis", "http", "ssh" or "unknown"
    # Why the probe could not tell, when it could not (no answer: busy, or still starting): it is tried again.
    unsettled: str = ""
    # False: the socket was not connected to (what it speaks is then guessed from its port)
    probed: bool = True
    # Never answered though probed MAX_PROBES times (probe_memory): why, for the report. Final,
    # like an answer.
    silent: str = ""


# The probes of the protocols where the client speaks first (agent/protocols.py), by name: (request, bytes to
# read at most, parser of the reply).
CLIENT_FIRST: dict[str, tuple[bytes, int, Callable[[bytes], object | None]]] = {
    "postgres": (postgres.SSL_REQUEST, postgres.MAX_ANSWER, postgres.parse_ssl_response),
    "redis": (redis.PING, redis.MAX_REPLY, redis.parse_ping_reply),
    "http": (http.REQUEST, http.MAX_RESPONSE, http.parse_response),
}


NOT_PROBED = Identity("unknown", probed=False)


async def identify(listener: Listener, allow: Mapping[str, str], timeout: float, *,
                   ports: Mapping[int, str] = WELL_KNOWN_PORTS) -> Identity:
    """`ports`: which protocol each port is expected to speak (the table's well-known ports; a test serving
    real servers on free ports names them)."""
    host = listener.address
    if listener.is_wildcard:
        host = "127.0.0.1" if ":" not in host else "::1"
    well_known = ports.get(listener.port)
    if well_known is not None and KNOWN[well_known].client_first:
        if well_known not in allow:
            return NOT_PROBED  # the policy names the likely protocol and how to allow it
        request, limit, parse = CLIENT_FIRST[well_known]
        answer = await banner.converse(host, listener.port, timeout, request, limit)
        if parse(answer.data) is not None:
            return Identity(well_known)
        return _unrecognised(answer, f"no answer to the {well_known} probe", timeout)
    if "mysql" not in allow and well_known != "mysql":
        return NOT_PROBED  # nothing allowed speaks first here: do not even connect
    # A MySQL greeting is answered with a login probe before the hang-up (a bare hang-up is a handshake error
    # that MariaDB counts against the address): once per socket, since a definite answer is kept.
    answer = await mysql.first_words(host, listener.port, timeout)
    if mysql.parse_greeting(answer.data) is not None:
        return Identity("mysql")
    if banner.is_ssh(answer.data):
        return Identity("ssh")
    return _unrecognised(answer, "no greeting", timeout)


def _unrecognised(answer: banner.Answer, nothing: str, timeout: float) -> Identity:
    """An answer that is not the protocol is final; no answer at all is not."""
    if answer.data:
        return Identity("unknown")
    if answer.silence == "timeout":
        return Identity("unknown", f"{nothing} within {timeout:g} s; will retry")
    if answer.silence == "refused":
        return Identity("unknown", "connection refused; will retry")
    return Identity("unknown", f"{nothing}: the connection was closed; will retry")
