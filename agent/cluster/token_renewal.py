"""The agent renews its own ServiceAccount token before it expires (TokenRequest), so a VM never needs a
token copied by hand again, and a VM that was off for a while renews at once when it comes back.

Schedule: at `fraction` of the current token's life; the new token is asked for the same audiences and the
same lifetime, written atomically (mode 0600) to state_dir/token, and the agent's connections use it from
their next request (agent.cluster.tokens picks the newest valid token).

Whose clock (issue 20): the token's times are the apiserver's, and a VM's wall clock may be off by any amount.
A token this agent received is due `fraction * lifetime` after it arrived, on the monotonic clock; only a
token read from a file (enrolled, or renewed before a restart) is placed by its `iat` on the wall clock, and
then never further away than `fraction * lifetime` (a clock behind cannot push it past its expiry; a clock
ahead renews at once, and the renewal it gets is scheduled from its arrival). So a skewed clock costs at most
one early renewal, never a storm (1,014 TokenRequests in 2 s with the clock 50 min ahead of a 1 h token,
before); renewals are also never closer than MIN_INTERVAL. A received token whose `iat` is far from the VM's
clock is logged once, as skew. Waits are cut into pieces of at most MAX_WAIT,
so a token an admin put in place meanwhile is noticed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from agent.cluster.backoff import Backoff
from agent.cluster.errors import ClusterError, Unauthorized
from agent.cluster.kube import KubeClient
from agent.cluster.tokens import Token, TokenFiles, parse_claims, utc, write_token

MAX_WAIT = 60.0
MIN_LIFETIME = 600  # the apiserver refuses shorter TokenRequests
MIN_INTERVAL = 10.0  # seconds between two renewals at least, whatever the tokens say
# seconds between a new token's iat and the VM's clock that are said (transit is far less)
SKEW_WARNING = 60.0


def renewal_due(token: Token, fraction: float) -> float | None:
    """When (wall clock) to renew `token`; None when it cannot be renewed (no expiry:
    a legacy Secret token)."""
    claims = token.claims
    if claims is None or not claims.lifetime:
        return None
    return claims.issued_at + fraction * claims.lifetime


class TokenRenewal:
    def __init__(self, kube: KubeClient, tokens: TokenFiles, namespace: str, service_account: str, *,
                 fraction: float, log: structlog.typing.FilteringBoundLogger,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 backoff: Backoff | None = None) -> None:
        self._kube = kube
        self._tokens = tokens
        self.namespace = namespace
        self.service_account = service_account
        self.fraction = fraction
        self._log = log
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._backoff = backoff or Backoff(base=5.0, cap=300.0)
        self.renewals = 0
        self.last_error = ""
        self.next_renewal: float | None = None  # wall clock
        self.skew = 0.0  # the VM's clock minus the apiserver's, from the last token received (0: not known)
        self._due: tuple[str, float] | None = None  # (token value, monotonic time its renewal is due)
        self._last_renewal = -math.inf  # monotonic

    async def run(self) -> None:
        """Renew whenever due, until cancelled."""
        if not self._tokens.renewed_path:
            return
        retry_at = -math.inf  # monotonic
        said_no_expiry = False
        while True:
            token = self._tokens.current_or_none()
            if token is None:  # no token readable at all (TokenFiles said why): look again later
                await self._sleep(MAX_WAIT)
                continue
            wait = self.wait_for(token)
            # an admin put a token without expiry in place: nothing to renew, unless it changes
            if wait is None:
                if not said_no_expiry:
                    self._log.info("the token has no expiry; it is not renewed", token_file=token.path)
                said_no_expiry = True
                await self._sleep(MAX_WAIT)
                continue
            said_no_expiry = False
            now = self._monotonic()
            wait = max(wait, retry_at - now, self._last_renewal + MIN_INTERVAL - now)
            self.next_renewal = self._clock() + max(wait, 0.0)
            if wait > 0:
                await self._sleep(min(wait, MAX_WAIT))
                continue
            try:
                await self.renew_once(token)
            except ClusterError as exc:
                delay = self._backoff.next(after=exc)
                retry_at = self._monotonic() + delay
                # the guard said that one
                if str(exc) != self.last_error and not isinstance(exc, Unauthorized):
                    self._log.error("token renewal failed", error=str(exc), retry_in=round(delay, 1),
                                    expires=utc(token.claims.expires_at) if token.claims else None)
                self.last_error = str(exc)
                continue
            retry_at = -math.inf
            self._backoff.reset()

    def wait_for(self, token: Token) -> float | None:
        """Seconds until `token` is due for renewal (≤ 0: now); None when it has no expiry."""
        due = renewal_due(token, self.fraction)
        if due is None:
            return None
        assert token.claims is not None
        if self._due is None or self._due[0] != token.value:
            # First sight of a token read from a file: placed once by the wall clock, bounded by its span.
            span = self.fraction * token.claims.lifetime
            self._due = (token.value, self._monotonic() + min(max(due - self._clock(), 0.0), span))
        return self._due[1] - self._monotonic()

    async def renew_once(self, token: Token) -> Token:
        """Ask for a token like `token` (audiences, lifetime) and write it; the new one is returned."""
        claims = token.claims
        assert claims is not None
        lifetime = max(MIN_LIFETIME, math.ceil(claims.lifetime))
        value = await self._kube.request_token(self.namespace, self.service_account,
                                               audiences=list(claims.audiences), expiration_seconds=lifetime)
        arrived = self._monotonic()
        path = self._tokens.renewed_path
        try:
            write_token(path, value)
        except OSError as exc:
            raise ClusterError(f"cannot write the renewed token to {path}: {exc}; the agent must be able to "
                               "write there (state_dir)") from exc
        self._last_renewal = arrived
        if fresh_claims := parse_claims(value):
            self._due = (value, arrived + self.fraction * fresh_claims.lifetime)
        new = self._tokens.current()
        self.renewals += 1
        self.last_error = ""
        fresh = parse_claims(value)
        if fresh is not None and fresh.issued_at:
            skew = self._clock() - fresh.issued_at
            if abs(skew) > SKEW_WARNING and abs(skew - self.skew) > SKEW_WARNING:
                self._log.warning("the VM's clock is off from the apiserver's: renewals follow the time "
                                  "since a token arrived, but check the VM's time sync (NTP)",
                                  seconds=round(skew), ahead=skew > 0)
            self.skew = skew
        wait = self.wait_for(new)
        self._log.info("token renewed", token_file=path,
                       expires=utc(fresh.expires_at) if fresh and fresh.expires_at else None,
                       next_renewal=utc(self._clock() + wait) if wait is not None else None)
        return new
