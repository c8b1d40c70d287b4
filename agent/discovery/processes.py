"""Which process owns a socket: the `socket:[inode]` links under /proc/<pid>/fd, as `ss -p` finds them.

Only the processes the agent may inspect are seen (under systemd, its own user's); others stay unnamed.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path


class ProcessNames:
    """Names per socket inode, remembered for the socket's life: /proc is walked only when a socket is new."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._known: dict[int, str] = {}  # "" for a socket whose process could not be seen

    def lookup(self, inodes: Iterable[int]) -> dict[int, str]:
        live = {i for i in inodes if i}
        self._known = {i: name for i, name in self._known.items() if i in live}
        new = live - self._known.keys()
        if new:
            found = process_names(new, self._proc)
            self._known.update({i: found.get(i, "") for i in new})
        return {i: name for i, name in self._known.items() if name}


def process_names(inodes: Collection[int], proc: Path = Path("/proc")) -> dict[int, str]:
    """Map socket inodes to the name of a process holding them; stops as soon as all are found."""
    wanted = {f"socket:[{i}]": i for i in inodes if i}
    names: dict[int, str] = {}
    if not wanted:
        return names
    try:
        with os.scandir(proc) as entries:
            pids = [e.name for e in entries if e.name.isdigit()]
    except OSError:
        return names
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            with os.scandir(fd_dir) as fds:
                links = [_readlink(e.path) for e in fds]
        except OSError:  # gone, or not ours to read
            continue
        hits = [wanted[link] for link in links if link in wanted]
        if not hits:
            continue
        try:
            name = (proc / pid / "comm").read_text().strip()
        except OSError:
            continue
        for inode in hits:
            names.setdefault(inode, name)
        if len(names) == len(wanted):
            break
    return names


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # the descriptor was closed meanwhile
        return ""
