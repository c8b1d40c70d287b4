"""Atomic file writes: the file holds the old content or the new, never half of either, whatever crashes when.

Written to a temporary file in the same directory (same filesystem), flushed to disk, given its mode, renamed
over the target, and the directory flushed so the rename itself survives a power cut. Used for the renewed
token, the maintenance store and the stop-kind file.
"""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, data: bytes, mode: int) -> None:
    """Replace `path` with `data`, mode `mode` whatever the umask. The directory must exist."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
