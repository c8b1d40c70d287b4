"""What the agent does when the cluster rejects its token (401): one line that says why and what to do, health
critical, and no retry storm.

Every loop of the agent (sync, heartbeat, watches, reaper) would retry on its own schedule; instead, once the
token in use was rejected, their calls fail here, without reaching the apiserver, until the token changes (an
admin replaced the file, a renewal was written) or a slow probe is due (30 s doubling to 5 min): one request
then goes through and tells whether the cluster takes the token again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from agent.cluster.backoff import Backoff
from agent.cluster.errors import Unauthorized
from agent.cluster.tokens import TokenFiles, utc
from agent.logs import Problem

PROBE_FIRST = 30.0
PROBE_CAP = 300.0


def rejection_message(vm: str, claims_expiry: float, subject: str, now: float) -> str:
    """Why a token was refused, as one line for the log, the status and the health reasons."""
    fix = f"re-enroll with `kubectl vmesh enroll {vm}`"
    if claims_expiry and now >= claims_expiry:
        return f"token expired on {utc(claims_expiry)}; {fix}"
    account = f" ({subject})" if subject else ""
    return f"token was revoked or its ServiceAccount deleted{account}: the cluster refuses it; {fix}"


class CredentialGuard:
    """Shared by the agent's cluster connections; `problem` is set while the cluster refuses the token."""

    def __init__(self, tokens: TokenFiles, vm: str, log: structlog.typing.FilteringBoundLogger, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 backoff: Backoff | None = None) -> None:
        self._tokens = tokens
        self._vm = vm
        self._log = log
        self._clock = clock
        self._monotonic = monotonic
        self._backoff = backoff or Backoff(base=PROBE_FIRST, cap=PROBE_CAP, jitter=0.1)
        self._problem = Problem()
        # requests the apiserver refused (401): the slow probes, for the tests and metrics
        self.rejections = 0
        self._rejected = ""  # the token value that was refused
        self._next_probe = 0.0

    def before_call(self) -> None:
        """Raise Unauthorized at once while the refused token is still the one in use and no probe is due."""
        if not self._problem:
            return
        current = self._tokens.current_or_none()
        token = current.value if current else ""
        if token != self._rejected:
            return  # a new token: try it
        now = self._monotonic()
        if now < self._next_probe:
            raise Unauthorized(self._problem.text, status=401)
        self._next_probe = now + self._backoff.next()  # this call is the probe; the others keep waiting

    def rejected(self, exc: Unauthorized) -> Unauthorized:
        """A 401 from the apiserver: say why once, and hold further calls back."""
        token = self._tokens.current_or_none()
        if token is None:
            return exc
        claims = token.claims
        problem = rejection_message(self._vm, claims.expires_at if claims else 0.0,
                                    claims.subject if claims else "", self._clock())
        self.rejections += 1
        self._tokens.refuse(token.value)  # the other file's token, if any, is tried next
        if token.value != self._rejected:
            self._backoff.reset()
            self._next_probe = self._monotonic() + self._backoff.next()
        self._problem.set(self._log.error, problem, token_file=token.path)
        self._rejected = token.value
        return Unauthorized(problem, status=exc.status, reason=exc.reason)

    @property
    def problem(self) -> str:
        """Why the cluster refuses the token, while it does; "" otherwise."""
        return self._problem.text

    def accepted(self) -> None:
        if self._problem:
            self._problem.clear(self._log.info, "the cluster accepts the agent's token again")
            self._rejected = ""
            self._backoff.reset()
