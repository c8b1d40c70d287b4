"""Process names per socket, from a /proc tree in fixture files: walked only when a socket is new."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.discovery.processes import ProcessNames


def fake_proc(root: Path, pid: int, name: str, inodes: list[int]) -> None:
    (root / str(pid) / "fd").mkdir(parents=True)
    (root / str(pid) / "comm").write_text(name + "\n")
    for fd, inode in enumerate(inodes, start=3):
        (root / str(pid) / "fd" / str(fd)).symlink_to(f"socket:[{inode}]")


def test_proc_is_walked_only_for_new_sockets(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 100, "mariadbd", [11, 12])
    fake_proc(proc, 200, "sshd", [21])
    names = ProcessNames(proc)
    assert names.lookup([11, 21, 99]) == {11: "mariadbd", 21: "sshd"}

    shutil.rmtree(proc)  # a walk now would find nothing: the names come from memory
    proc.mkdir()
    assert names.lookup([11, 21, 99]) == {11: "mariadbd", 21: "sshd"}  # 99 (not visible) is not walked for again

    fake_proc(proc, 300, "redis-server", [31])
    assert names.lookup([11, 31]) == {11: "mariadbd", 31: "redis-server"}  # a new socket: walked, others kept
    assert names.lookup([31]) == {31: "redis-server"}  # 11 closed: forgotten
