"""agent/files.py: a file is replaced whole, with its mode whatever the umask, and nothing is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.files import write_atomically


def test_a_file_is_replaced_whole_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "token"
    target.write_text("old")
    old_umask = os.umask(0o077)
    try:
        write_atomically(str(target), b"new\n", 0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_a_failed_replace_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    (tmp_path / "kind").mkdir()  # a directory in the way: the rename fails
    with pytest.raises(OSError):
        write_atomically(str(tmp_path / "kind"), b"stop\n", 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kind"]
