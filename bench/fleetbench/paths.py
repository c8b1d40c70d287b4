"""What the parent starts: bench/fleet itself (the listener and the workers) and the workers' interpreter."""

from __future__ import annotations

from pathlib import Path

from tests.testbed.cluster import ROOT as REPO

SCRIPT = Path(__file__).resolve().parent.parent / "fleet"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
