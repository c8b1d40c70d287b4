"""What the local API may see of an agent: a read-only view, and one narrow write (maintenance).

The API (views, metrics, server) is typed against this Protocol, never against agent.daemon.agent.Agent, so
the arrows point one way (agent → api; scripts/import_contract.py keeps it so). Agent satisfies it
structurally; a test double needs only these members. The components named here are the lower layers' own
objects, read through their public attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from agent.cluster.account import Verdict
from agent.cluster.credentials import CredentialGuard
from agent.cluster.token_renewal import TokenRenewal
from agent.cluster.tokens import Token, TokenFiles
from agent.config import Settings
from agent.discovery.scanner import DiscoveryReport
from agent.health.monitor import HealthMonitor
from agent.interpreter import Interpreter
from agent.lease.heartbeat import Heartbeat
from agent.lease.reaper import Reaper
from agent.lease.slots import ReaperSlots
from agent.state import Registration
from agent.sync.reconciler import Reconciler
from agent.sync.watcher import OwnObjectsWatcher


class CredentialsView(Protocol):
    """Whose token the agent uses (agent/daemon/account_watch.py). None: no token files (a kubeconfig), or not
    checked or renewed (yet)."""

    @property
    def tokens(self) -> TokenFiles | None: ...
    @property
    def guard(self) -> CredentialGuard | None: ...
    @property
    def account(self) -> Verdict | None: ...
    @property
    def renewal(self) -> TokenRenewal | None: ...

    def current_token(self) -> Token | None:
        """The token the agent presents now; None without token files, or while none can be read."""
        ...


class AgentView(Protocol):
    """Read-only, except set_maintenance. Components not started yet (or never: no registering) are None."""

    @property
    def settings(self) -> Settings: ...
    @property
    def started_at(self) -> float: ...  # monotonic
    @property
    def interpreter(self) -> Interpreter: ...  # the Python it runs on, and the deb's compiled modules for it
    @property
    def failure(self) -> str: ...  # why the agent stops, once it does
    @property
    def stopping(self) -> str: ...  # once stopping: "restarting: registrations kept" or "deregistering"
    @property
    def server(self) -> str: ...  # the API server (or kubeconfig) it talks to
    @property
    def report(self) -> DiscoveryReport | None: ...
    @property
    def tracked(self) -> Sequence[Registration]: ...  # from discovery and the config, before health
    @property
    def present(self) -> Sequence[Registration]: ...  # of those, the ones listening now
    @property
    def registrations(self) -> frozenset[Registration]: ...  # the desired state: with readiness
    @property
    def maintenance_reasons(self) -> Mapping[str, str]: ...  # service -> reason, while in maintenance
    @property
    def heartbeat(self) -> Heartbeat | None: ...
    @property
    def reconciler(self) -> Reconciler | None: ...
    @property
    def reaper(self) -> Reaper | None: ...
    @property
    def slots(self) -> ReaperSlots | None: ...
    @property
    def watcher(self) -> OwnObjectsWatcher | None: ...
    @property
    def credentials(self) -> CredentialsView: ...

    def loops_alive(self) -> bool:
        """Every long-running loop of the agent is still running."""
        ...

    def monitor(self, registration: Registration) -> HealthMonitor | None:
        """The health monitor of a present registration."""
        ...

    def check_kind(self, registration: Registration) -> str:
        """The check type that runs for a registration (tcp, mysql, http, exec)."""
        ...

    def set_maintenance(self, service: str, enabled: bool, reason: str) -> str | None:
        """Turn maintenance on or off; returns the reason now in force (None: off)."""
        ...
