"""The agent renews its own ServiceAccount token before it expires (TokenRequest), so a VM never needs a
token copied by hand again, and a VM that was off for a while renews at once when it comes back.

Schedule: at `fraction` of the current token's life (issued + fraction * (expiry - issued)); the new token is
asked for the same audiences and the same lifetime, written atomically (mode 0600) to state_dir/token, and the
agent's connections use it from their next request (agent.cluster.tokens picks the newest valid token). Times
are the token's own (wall clock); waits are cut into pieces of at most MAX_WAIT, so a suspended VM or a clock
step is noticed, and so is a token an admin put in place meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from agent.backoff import Backoff
from agent.cluster.errors import ClusterError, Unauthorized
from agent.cluster.kube import KubeClient
from agent.cluster.tokens import Token, TokenFiles, parse_claims, utc, write_token

MAX_WAIT = 60.0
MIN_LIFETIME = 600  # the apiserver refuses shorter TokenRequests


def renewal_due(token: Token, fraction: float) -> float | None:
    """When (wall clock) to renew `token`; None when it cannot be renewed (no expiry: a legacy Secret token)."""
    claims = token.claims
    if claims is None or not claims.lifetime:
        return None
    return claims.issued_at + fraction * claims.lifetime


class TokenRenewal:
    def __init__(self, kube: KubeClient, tokens: TokenFiles, namespace: str, service_account: str, *,
                 fraction: float, log: structlog.typing.FilteringBoundLogger,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 backoff: Backoff | None = None) -> None:
        self._kube = kube
        self._tokens = tokens
        self.namespace = namespace
        self.service_account = service_account
        self.fraction = fraction
        self._log = log
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff(base=5.0, cap=300.0)
        self.renewals = 0
        self.last_error = ""
        self.next_renewal: float | None = None  # wall clock

    async def run(self) -> None:
        """Renew whenever due, until cancelled."""
        if not self._tokens.renewed_path:
            return
        retry_at = 0.0
        said_no_expiry = False
        while True:
            token = self._tokens.current()
            due = renewal_due(token, self.fraction)
            if due is None:  # an admin put a token without expiry in place: nothing to renew, unless it changes
                if not said_no_expiry:
                    self._log.info("the token has no expiry; it is not renewed", token_file=token.path)
                said_no_expiry = True
                await self._sleep(MAX_WAIT)
                continue
            said_no_expiry = False
            now = self._clock()
            self.next_renewal = max(due, retry_at)
            if now < self.next_renewal:
                await self._sleep(min(self.next_renewal - now, MAX_WAIT))
                continue
            try:
                await self.renew_once(token)
            except ClusterError as exc:
                delay = self._backoff.next()
                retry_at = self._clock() + delay
                if str(exc) != self.last_error and not isinstance(exc, Unauthorized):  # the guard said that one
                    self._log.error("token renewal failed", error=str(exc), retry_in=round(delay, 1),
                                    expires=utc(token.claims.expires_at) if token.claims else None)
                self.last_error = str(exc)
                continue
            retry_at = 0.0
            self._backoff.reset()

    async def renew_once(self, token: Token) -> Token:
        """Ask for a token like `token` (audiences, lifetime) and write it; the new one is returned."""
        claims = token.claims
        assert claims is not None
        lifetime = max(MIN_LIFETIME, math.ceil(claims.lifetime))
        value = await self._kube.request_token(self.namespace, self.service_account,
                                               audiences=list(claims.audiences), expiration_seconds=lifetime)
        path = self._tokens.renewed_path
        try:
            write_token(path, value)
        except OSError as exc:
            raise ClusterError(f"cannot write the renewed token to {path}: {exc}; the agent must be able to write "
                               "there (state_dir)") from exc
        new = self._tokens.current()
        self.renewals += 1
        self.last_error = ""
        fresh = parse_claims(value)
        self._log.info("token renewed", token_file=path,
                       expires=utc(fresh.expires_at) if fresh and fresh.expires_at else None,
                       next_renewal=utc(d) if (d := renewal_due(new, self.fraction)) else None)
        return new
