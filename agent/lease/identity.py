"""Who holds a Lease: this VM's name, machine, boot and process, so that two live agents never look alike.

A cloned VM keeps its hostname (so its vm_name) and usually its /etc/machine-id; its boot id
(/proc/sys/kernel/random/boot_id, random per boot) differs. Two agents on one host (simulated VMs in
network namespaces, or a second unit by mistake) share both and differ by process id. Reading (files) is
kept apart from parsing (pure functions), so the rules are tested on literal strings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SHORT = 12  # hex digits kept of the machine and boot ids: 48 random bits tell boots apart


def parse_id(text: str) -> str:
    """A machine id ("3d12…a4\\n") or boot id ("2d063c5b-d7e1-…\\n") as lowercase hex, shortened."""
    return "".join(c for c in text.strip().lower() if c in "0123456789abcdef")[:SHORT]


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (another user's counts: EPERM means it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class HolderIdentity:
    """`<vm>/<machine>/<boot>/<pid>`, written as a Lease's holderIdentity."""

    vm: str
    machine: str
    boot: str
    pid: int

    def __str__(self) -> str:
        return f"{self.vm}/{self.machine}/{self.boot}/{self.pid}"

    @classmethod
    def parse(cls, text: str) -> HolderIdentity | None:
        """The identity another agent wrote, or None for anything else
        (an older release wrote the bare vm)."""
        parts = text.rsplit("/", 3)
        if len(parts) != 4 or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]))

    def earlier_run(self, holder: str, alive: Callable[[int], bool] = process_alive) -> bool:
        """Whether `holder` is an earlier run of this agent on this very boot that is gone (a crash, a restart
        by systemd): same machine and boot, and its process no longer exists. Only then is a Lease adopted at
        once; after a reboot (new boot id, like a clone's) it is adopted once it is seen not renewed."""
        other = HolderIdentity.parse(holder)
        return (other is not None and other != self and (other.vm, other.machine, other.boot) ==
                (self.vm, self.machine, self.boot) and not alive(other.pid))


def read_identity(vm: str, root: str = "/", pid: int | None = None) -> HolderIdentity:
    """This agent's identity; `root` lets a test point at fixture files. A missing file counts as empty."""

    def read(path: str) -> str:
        try:
            return (Path(root) / path).read_text(encoding="ascii", errors="replace")
        except OSError:
            return ""

    return HolderIdentity(vm, parse_id(read("etc/machine-id")) or "unknown",
                          parse_id(read("proc/sys/kernel/random/boot_id")) or "unknown",
                          os.getpid() if pid is None else pid)
