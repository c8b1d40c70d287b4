"""Maintenance mode per service: set from the local API, kept in the state directory across restarts."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class MaintenanceStore:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "maintenance.json"
        self.reasons: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: start clean rather than refuse to run; the API shows the truth
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def set(self, service: str, enabled: bool, reason: str) -> None:
        if enabled:
            self.reasons[service] = reason or "maintenance"
        else:
            self.reasons.pop(service, None)
        self._save()

    def _save(self) -> None:
        """Write-then-rename, so a crash never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".maintenance-")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.reasons, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
