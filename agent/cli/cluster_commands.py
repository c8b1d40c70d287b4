"""One-shot cluster commands for admins: deregister this VM, or one pass of peer reaping."""

from __future__ import annotations

import socket

from agent.cluster.errors import ClusterError, Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import lease_name
from agent.cluster.resources import LEASES
from agent.cluster.tokens import TokenFiles, agent_token_files
from agent.config import Settings
from agent.lease.identity import HolderIdentity, read_identity
from agent.lease.reaper import reap_pass
from agent.logs import get_logger
from agent.sync.backends.backend import no_lease, remove_shared_entries
from agent.sync.backends.registry import make_backend


def _tokens(settings: Settings) -> TokenFiles | None:
    """As the running agent does: its renewed token counts too
    (the enrolled one may have expired long ago)."""
    cluster = settings.cluster
    return agent_token_files(cluster.token_file, settings.state_dir) if cluster.token_file else None


class AgentRunning(Exception):
    """`deregister` while this VM's agent runs: it would register everything again at once."""


def agent_answers(path: str) -> bool:
    """Whether an agent listens on its local API socket (a stale socket file refuses the connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


async def deregister(settings: Settings) -> list[str]:
    """Delete this VM's objects (its own, or its entries in shared ones), through the backend's own removal,
    and its Lease; the shared Service stays. Refused while the agent runs (it re-registered within ~0.1 s,
    issue 20); the Lease is deleted only if this machine holds it, and only the version read (a clone with the
    same vm_name keeps its own)."""
    if agent_answers(settings.api.socket):
        raise AgentRunning(f"the agent is running (its API answers on {settings.api.socket}) and would "
                           "register this VM again at once: stop it for good first (`systemctl stop "
                           "vmesh-agent` deregisters by itself), then run deregister for what is left")
    kube = await KubeClient.connect(settings.cluster, _tokens(settings))
    lease = lease_name(settings.vm_name)
    try:
        try:
            current: dict[str, object] | None = await kube.get(LEASES, settings.namespace, lease)
        except NotFound:
            current = None
        spec = current.get("spec") if current else None
        holder = HolderIdentity.parse(
            str((spec if isinstance(spec, dict) else {}).get("holderIdentity") or ""))
        machine = read_identity(settings.vm_name).machine
        if holder is not None and holder.machine != machine:
            raise ClusterError(f"lease/{lease} is held by another machine ({holder}; this one is {machine}): "
                               "a clone with the same vm_name, whose objects are labelled as this VM's too. "
                               "Nothing removed; give one of them another vm_name")
        log = get_logger(vm=settings.vm_name)
        removed = await make_backend(settings, kube, settings.vm_name, no_lease, log).remove_all()
        if current is not None:
            meta = current["metadata"]
            assert isinstance(meta, dict)
            try:
                await kube.delete(LEASES, settings.namespace, lease,
                                  resource_version=str(meta["resourceVersion"]), uid=str(meta["uid"]))
                removed.append(f"lease/{lease}")
            except NotFound:
                pass
            except Conflict as exc:
                raise ClusterError(f"lease/{lease} was renewed while being deleted (an agent of this VM is "
                                   f"running somewhere): not deleted ({exc})") from exc
    finally:
        await kube.close()
    return removed


async def reap_once(settings: Settings) -> list[str]:
    """Watch the Leases for the longest lease period + grace, then remove the VMs that did not renew."""
    kube = await KubeClient.connect(settings.cluster, _tokens(settings))
    log = get_logger(vm=settings.vm_name)
    reaped: list[str] = []

    async def after_reap(vm: str) -> None:
        reaped.append(vm)
        await remove_shared_entries(make_backend(settings, kube, vm, no_lease, log))

    try:
        await reap_pass(kube, settings.namespace, lease_name(settings.vm_name), after_reap,
                        grace=settings.reaper.grace, brake_fraction=settings.reaper.brake_fraction,
                        timeout=settings.cluster.request_timeout, log=log)
    finally:
        await kube.close()
    return reaped
