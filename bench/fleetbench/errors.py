"""The bench's log lines (stderr) and its two failures. Standard library only."""

from __future__ import annotations

import sys


def _log(msg: str) -> None:
    print(f"[fleet] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    """The bench could not run, or the fleet was wrong (lost or duplicated endpoints): exit 2."""


class NotCorrect(Exception):
    """The fleet did not come back to one ready endpoint per VM after a phase: the next phases are not run."""
