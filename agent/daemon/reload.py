"""What a reload (SIGHUP) takes from the config file, and what it keeps.

An invalid file changes nothing: the running config stays, and why is said. The settings that make the agent
who it is in the cluster (its name, namespace, backend, credentials, sockets, state directory, reaping) change
only on a restart: a reload keeps their running values and says which ones it kept. The agent applies the rest
(agent/daemon/agent.py `reload`): checks, discovery, the heartbeat's pace, the resync interval.
"""

from __future__ import annotations

import dataclasses

import structlog

from agent.config import ConfigError, Settings, load_settings

# Settings that define the agent's identity in the cluster; changing them needs a restart.
RESTART_ONLY = ("vm_name", "namespace", "backend", "cluster", "api", "metrics", "state_dir", "reaper", "log",
                "endpoints", "workloadentry", "externalworkload")


def reread(path: str, running: Settings, log: structlog.typing.FilteringBoundLogger) -> Settings | None:
    """The config at `path` as a reload applies it; None when it is invalid (said, and nothing changes)."""
    try:
        new = load_settings(path)
    except ConfigError as exc:
        log.error("reload rejected; keeping the running config", error=str(exc))
        return None
    kept = [key for key in RESTART_ONLY if getattr(new, key) != getattr(running, key)]
    if kept:
        log.warning("these settings change only on restart; kept the running values", keys=kept)
        new = dataclasses.replace(new, **{key: getattr(running, key) for key in kept})
    return new
