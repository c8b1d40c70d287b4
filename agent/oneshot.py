"""One-shot cluster commands for admins: deregister this VM, or one pass of peer reaping."""

from __future__ import annotations

import asyncio

from agent.cluster.errors import NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import lease_name
from agent.cluster.resources import LEASES
from agent.cluster.tokens import TokenFiles, agent_token_files
from agent.config import Settings
from agent.heartbeat import Heartbeat
from agent.logs import get_logger
from agent.reaper import Reaper
from agent.sync.backend import Backend
from agent.sync.registry import make_backend


def _tokens(settings: Settings) -> TokenFiles | None:
    """As the running agent does: its renewed token counts too (the enrolled one may have expired long ago)."""
    cluster = settings.cluster
    return agent_token_files(cluster.token_file, settings.state_dir) if cluster.token_file else None


async def deregister(settings: Settings) -> list[str]:
    """Delete this VM's objects (its own, or its entries in shared ones), through the backend's own removal, and
    its Lease; the shared Service stays."""
    kube = await KubeClient.connect(settings.cluster, _tokens(settings))
    try:
        log = get_logger(vm=settings.vm_name)
        heartbeat = Heartbeat(kube, settings.namespace, settings.vm_name, interval=settings.heartbeat.interval,
                              lease_duration=settings.heartbeat.lease_duration, log=log)
        removed = await make_backend(settings, kube, settings.vm_name, heartbeat, log).remove_all()
        lease = lease_name(settings.vm_name)
        try:
            await kube.delete(LEASES, settings.namespace, lease)
            removed.append(f"lease/{lease}")
        except NotFound:
            pass
    finally:
        await kube.close()
    return removed


async def reap_once(settings: Settings) -> list[str]:
    """Watch the Leases for the longest lease period + grace, then remove the VMs that did not renew."""
    kube = await KubeClient.connect(settings.cluster, _tokens(settings))
    log = get_logger(vm=settings.vm_name)
    heartbeat = Heartbeat(kube, settings.namespace, settings.vm_name, interval=settings.heartbeat.interval,
                          lease_duration=settings.heartbeat.lease_duration, log=log)
    reaped: list[str] = []

    def backend_for(vm: str) -> Backend:
        reaped.append(vm)
        return make_backend(settings, kube, vm, heartbeat, log)

    reaper = Reaper(kube, settings.namespace, heartbeat.name, grace=settings.reaper.grace,
                    brake_fraction=settings.reaper.brake_fraction, backend_for=backend_for, log=log)
    watcher = asyncio.create_task(reaper.run())
    try:
        await asyncio.wait_for(reaper.synced.wait(), settings.cluster.request_timeout)
        longest = max((o.duration for o in reaper.observer.leases.values()), default=0.0)
        await asyncio.sleep(longest + settings.reaper.grace + 1)
        await reaper.reap_expired()
        if reaper.braking:
            log.warning("nothing reaped: the brake holds", reason=reaper.braking)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await kube.close()
    return reaped
