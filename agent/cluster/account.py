"""Whose token this is: checked at start against the VM the config names.

Each enrolled VM has its own ServiceAccount `vmesh-vm-<vm>`; the shared `vmesh-agent` account of the first
releases still works, with a warning, until the VM is re-enrolled. Another VM's token is refused: the agent
would register as one VM with the other's rights (a copied bundle, or a bundle meant for another machine).

The apiserver is asked (SelfSubjectReview): it is the one that authenticates the token, so its answer holds
for any credential (a kubeconfig's client certificate too), and a token it refuses shows at once. Only when it
cannot answer (unreachable at boot, or older than 1.28) does the token's own `sub` claim decide.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum

import structlog

from agent.cluster.errors import ClusterError, NotFound, Unauthorized
from agent.cluster.kube import KubeClient
from agent.cluster.tokens import TokenFiles, service_account_of

VM_ACCOUNT_PREFIX = "vmesh-vm-"
LEGACY_ACCOUNT = "vmesh-agent"
# An unreachable (blackholed) apiserver must not hold the start up for a whole request timeout before the
# first sync waits one more: past this, the token's claim decides.
ASK_TIMEOUT = 3.0


class Kind(Enum):
    OWN = "own"  # this VM's own ServiceAccount: the token renews itself
    LEGACY = "legacy"  # the shared vmesh-agent account: works, with a warning
    OTHER_VM = "other-vm"  # another VM's account: nothing is registered
    OTHER = "other"  # a kubeconfig user or some other account: the admin's choice, used as it is
    REJECTED = "rejected"  # the cluster refuses the token (expired, revoked)


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    username: str
    message: str = ""  # the line to log: a warning (legacy) or the reason nothing is registered
    source: str = "apiserver"  # "apiserver", or "token" when the token's sub claim decided

    @property
    def registers(self) -> bool:
        return self.kind in (Kind.OWN, Kind.LEGACY, Kind.OTHER)

    @property
    def service_account(self) -> tuple[str, str] | None:
        return service_account_of(self.username)


def judge(username: str, vm: str, namespace: str) -> Verdict:
    """Whether an account may register VM `vm` in `namespace`."""
    account = service_account_of(username)
    if account is None:
        return Verdict(Kind.OTHER, username)
    ns, name = account
    fix = f"re-enroll with `kubectl vmesh enroll {vm}`"
    if name == LEGACY_ACCOUNT and ns == namespace:
        return Verdict(Kind.LEGACY, username, f"VM {vm} uses the shared legacy token ({username}); {fix}")
    if name.startswith(VM_ACCOUNT_PREFIX):
        other = name[len(VM_ACCOUNT_PREFIX):]
        if other == vm and ns == namespace:
            return Verdict(Kind.OWN, username)
        whose = f"VM {other}'s" if ns == namespace else f"VM {other}'s in namespace {ns}"
        return Verdict(Kind.OTHER_VM, username,
                       f"the token is {whose} ({username}), but this agent is VM {vm} in namespace "
                       f"{namespace}; not registering: install {vm}'s own token "
                       f"(`kubectl vmesh enroll {vm}`)")
    return Verdict(Kind.OTHER, username)


async def check_account(kube: KubeClient, tokens: TokenFiles | None, vm: str, namespace: str,
                        log: structlog.typing.FilteringBoundLogger) -> Verdict:
    """Ask the apiserver who the agent is; fall back to the token's claim when it cannot say."""
    try:
        async with asyncio.timeout(ASK_TIMEOUT):
            return judge(await kube.who_am_i(), vm, namespace)
    except Unauthorized as exc:
        return Verdict(Kind.REJECTED, "", str(exc))
    except (ClusterError, TimeoutError) as exc:
        why = ("the apiserver has no SelfSubjectReview API" if isinstance(exc, NotFound) else
               str(exc) or f"no answer within {ASK_TIMEOUT:g}s")
        token = tokens.current_or_none() if tokens is not None else None
        claims = token.claims if token is not None else None
        if claims is None or not claims.subject:
            log.warning("cannot check the token's account", error=why)
            return Verdict(Kind.OTHER, "", source="none")
        log.info("checking the token's account by its own claim", reason=why, subject=claims.subject)
        verdict = judge(claims.subject, vm, namespace)
        return Verdict(verdict.kind, verdict.username, verdict.message, source="token")
