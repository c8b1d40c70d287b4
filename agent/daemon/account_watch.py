"""Whose token this agent talks to the cluster with, watched for the process's life, and its renewal.

The enrolled token (then the agent's own renewals of it) is checked for whose account it is
(agent/cluster/account.py): this VM's, the shared legacy one, another VM's, or refused. Each new verdict is
said once. A new token (a renewal, or one an admin put in place) is checked again, and while the token is
refused or another VM's the agent registers nothing and starts as soon as a good one is there. Only a VM's
own account renews its token. With a kubeconfig there are no token files: its credentials are the admin's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from agent.cluster.account import Kind, Verdict, check_account
from agent.cluster.credentials import CredentialGuard
from agent.cluster.kube import KubeClient
from agent.cluster.token_renewal import TokenRenewal, renewal_due
from agent.cluster.tokens import Token, agent_token_files
from agent.config import Settings

# How often the token files are looked at (a stat) for a new token while the cluster refuses the current one
# or it is another VM's, and for a renewal to check the account of. Refused tokens reach the apiserver only as
# often as the credential guard's slow probe allows.
CREDENTIALS_POLL = 1.0
CREDENTIALS_RECHECK_WITHOUT_FILES = 60.0  # a kubeconfig's credentials: no file to watch, so a slow re-check


class AccountWatch:
    def __init__(self, settings: Settings, log: structlog.typing.FilteringBoundLogger) -> None:
        self.settings = settings
        self.log = log
        cluster = settings.cluster
        # The enrolled token, then the agent's own renewals of it; none with a kubeconfig.
        self.tokens = (agent_token_files(cluster.token_file, settings.state_dir, warn=log.warning)
                       if cluster.token_file and not cluster.kubeconfig else None)
        self.guard = CredentialGuard(self.tokens, settings.vm_name, log) if self.tokens else None
        self.account: Verdict | None = None  # whose token this is, as last checked
        self.renewal: TokenRenewal | None = None

    async def check(self, kube: KubeClient) -> Verdict:
        """Whose token this is; each new verdict is said once."""
        s = self.settings
        verdict = await check_account(kube, self.tokens, s.vm_name, s.namespace, self.log)
        if verdict != self.account:
            if verdict.kind is Kind.LEGACY:
                self.log.warning(verdict.message, account=verdict.username)
            elif verdict.kind is Kind.OTHER_VM:
                self.log.error(verdict.message, account=verdict.username, source=verdict.source)
            elif verdict.kind is Kind.REJECTED:
                if self.guard is None:  # the guard has said it already
                    self.log.error("the cluster refuses the agent's credentials", error=verdict.message)
            else:
                self.log.info("cluster account", account=verdict.username or None, source=verdict.source)
        self.account = verdict
        return verdict

    async def watch(self, kube: KubeClient, on_registers: Callable[[], Awaitable[None]]) -> None:
        """Check the account of each new token, and call `on_registers` at each verdict that lets the agent
        register (the agent starts registering at the first, once). A refused token reaches the apiserver only
        at the guard's slow probes; another VM's is not asked about again until it changes."""
        seen = self._token_value()
        while True:
            await asyncio.sleep(CREDENTIALS_POLL if self.tokens else CREDENTIALS_RECHECK_WITHOUT_FILES)
            value = self._token_value()
            # A refused account is asked about again at each tick, also while registering (a single 401 after
            # a renewal left it REJECTED until the next renewal, issue 20); the guard lets only its slow
            # probes through to the apiserver, so this costs no request in between.
            refused = self.account is not None and self.account.kind is Kind.REJECTED
            if value == seen and not refused:
                continue
            seen = value
            verdict = await self.check(kube)
            if verdict.registers:
                await on_registers()

    def current_token(self) -> Token | None:
        """The token the agent presents now; None without token files, or while none can be read."""
        return self.tokens.current_or_none() if self.tokens is not None else None

    def _token_value(self) -> str:
        token = self.current_token()
        return token.value if token is not None else ""

    def make_renewal(self, kube: KubeClient) -> TokenRenewal | None:
        """The token's renewal, for a VM's own account with a token that expires; None otherwise (the shared
        legacy account is meant to go away by re-enrolling)."""
        account = self.account.service_account if self.account and self.account.kind is Kind.OWN else None
        if self.tokens is None or account is None:
            return None
        token = self.tokens.current_or_none()  # None: the renewal waits until one can be read
        if token is not None and renewal_due(token, self.settings.cluster.token_renew_fraction) is None:
            self.log.info("the token has no expiry; it is not renewed", token_file=token.path)
            return None
        self.renewal = TokenRenewal(kube, self.tokens, account[0], account[1],
                                    fraction=self.settings.cluster.token_renew_fraction, log=self.log)
        return self.renewal
