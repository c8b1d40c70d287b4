"""Which kind of stop this is: a restart (keep the registrations), a stop for good, or a machine shutdown.

The agent runs unprivileged and sandboxed and cannot ask systemd itself. The unit's `ExecStop=+vmesh-agent
stop-kind ...` runs as root, outside the sandbox, before systemd sends SIGTERM: it asks PID 1 (over its
private socket, no dbus-daemon needed) what job stops the unit and whether the machine is shutting down, and
writes the answer into a file of the runtime directory that the agent reads when the signal comes. Reading
(systemctl) is kept apart from parsing (pure functions, tested on literal strings). Anything unclear counts as
a stop for good: deregistering is what every earlier release did, and it is never wrong, only slower.
"""

from __future__ import annotations

import contextlib
import enum
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.files import write_atomically

SWITCHES = ("auto", "always", "never")  # [sync] deregister_on_stop
SYSTEMCTL_TIMEOUT = 5.0  # seconds per question to PID 1; past it the kind is unknown (deregister)


class StopKind(enum.Enum):
    RESTART = "restart"  # systemctl restart / try-restart, a package upgrade's restart
    STOP = "stop"  # systemctl stop, disable --now, package removal, isolate
    SHUTDOWN = "shutdown"  # poweroff, reboot, halt, kexec
    UNKNOWN = "unknown"  # nobody said (no file, no job: a crash, a SIGTERM by hand): a stop for good

    @classmethod
    def parse(cls, text: str) -> StopKind:
        """The kind as written in the file ("restart\\n"); anything else is UNKNOWN."""
        try:
            return cls(text.strip())
        except ValueError:
            return cls.UNKNOWN


def job_type(list_jobs: str, unit: str) -> str:
    """The type of `unit`'s job in `systemctl list-jobs --no-legend --full` output ("" when it has none).

    Each line is `JOB UNIT TYPE STATE`; without --no-legend a header, a blank line and "N jobs listed." come
    too, and "No jobs running." when there are none: none of them names the unit in its second column."""
    for line in list_jobs.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit() and fields[1] == unit:
            return fields[2]
    return ""


def classify(system_state: str, job: str) -> StopKind:
    """The kind of stop from `systemctl is-system-running` and the unit's job type.

    The machine going down wins over the job (every unit gets a plain stop job then). systemd turns a
    try-restart (and reload-or-restart of a unit without reload) of an active unit into a restart job; the
    other names are kept in case a systemd shows them as asked."""
    if system_state.strip() == "stopping":
        return StopKind.SHUTDOWN
    if job in ("restart", "try-restart", "reload-or-restart", "try-reload-or-restart"):
        return StopKind.RESTART
    if job == "stop":
        return StopKind.STOP
    return StopKind.UNKNOWN


def should_deregister(kind: StopKind, switch: str, *, under_systemd: bool, failing: bool) -> bool:
    """Whether this stop drains and removes the VM's objects, or leaves them to the next process.

    always: every stop deregisters (the behaviour of the releases before this one). never: no stop does; the
    Lease expiry and the reapers remove the VM after a stop for good. auto: outside systemd every stop
    deregisters, as before (nothing restarts the agent there that it knows of); under systemd a restart keeps,
    and so does the agent's own failure exit (the unit's Restart=on-failure starts it again), unless the stop
    kind says the unit is stopped for good or the machine goes down."""
    if switch == "always":
        return True
    if switch == "never":
        return False
    if not under_systemd:
        return True
    if kind is StopKind.RESTART:
        return False
    if kind in (StopKind.STOP, StopKind.SHUTDOWN):
        return True
    return not failing


Run = Callable[[list[str]], str]


def _systemctl(args: list[str]) -> str:
    """systemctl's stdout ("" when it cannot be run or does not answer in time). is-system-running exits
    non-zero for every state but running, so the exit status is not looked at."""
    try:
        result = subprocess.run(["systemctl", *args], capture_output=True, text=True,
                                timeout=SYSTEMCTL_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout


def ask_systemd(unit: str, run: Run = _systemctl) -> tuple[StopKind, str, str]:
    """(kind, system state, the unit's job type) as PID 1 tells them now."""
    state = run(["is-system-running"]).strip()
    job = job_type(run(["list-jobs", "--no-legend", "--full", "--no-pager", unit]), unit)
    return classify(state, job), state, job


def write_kind(path: str, kind: StopKind) -> None:
    """Write the kind where the agent reads it: replaced atomically, readable by the agent's user (the file is
    root's; the runtime directory is the agent's, mode 0750)."""
    write_atomically(path, f"{kind.value}\n".encode(), 0o644)  # 0644 whatever the unit's UMask


def read_kind(path: str) -> StopKind:
    """The kind the ExecStop command wrote; UNKNOWN when there is no path, no file or no sense in it."""
    if not path:
        return StopKind.UNKNOWN
    try:
        return StopKind.parse(Path(path).read_text(encoding="ascii", errors="replace")[:64])
    except OSError:
        return StopKind.UNKNOWN


def forget_kind(path: str) -> None:
    """At start: a kind left by an earlier run says nothing about this one."""
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
