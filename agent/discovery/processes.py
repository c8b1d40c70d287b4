"""Which process owns a socket: the `socket:[inode]` links under /proc/<pid>/fd, as `ss -p` finds them.

Only the processes the agent may inspect are seen (under systemd, its own user's); others stay unnamed.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path


def process_names(inodes: Collection[int], proc: Path = Path("/proc")) -> dict[int, str]:
    """Map socket inodes to the name of a process holding them; stops as soon as all are found."""
    wanted = {f"socket:[{i}]": i for i in inodes if i}
    names: dict[int, str] = {}
    if not wanted:
        return names
    try:
        pids = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return names
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            links = [os.readlink(e.path) for e in os.scandir(fd_dir)]
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
