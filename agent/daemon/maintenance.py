"""Maintenance mode per service: set from the local API, kept in the state directory across restarts."""

from __future__ import annotations

import json
from pathlib import Path

from agent.files import write_atomically


class MaintenanceStore:
    """`unreadable` is set when the file exists but cannot be read: which services were in maintenance is then
    not known, and every service is held in maintenance (not ready) rather than brought back ready in the
    middle of someone's maintenance (issue 20), until the file is fixed or removed and the agent restarted, or
    maintenance is set or cleared through the API, which rewrites the file."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "maintenance.json"
        self.unreadable = ""
        self.reasons: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            data, why = None, str(exc)
        else:
            why = "not a JSON object"
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        self.unreadable = (f"{self.path} cannot be read ({why}): every service is held in maintenance; "
                           "fix or remove the file and restart, or set maintenance on or off again")
        return {}

    def reason(self, service: str) -> str | None:
        """Why `service` is in maintenance; None when it is not."""
        return self.reasons.get(service) or self.unreadable or None

    def set(self, service: str, enabled: bool, reason: str) -> None:
        if enabled:
            self.reasons[service] = reason or "maintenance"
        else:
            self.reasons.pop(service, None)
        self._save()
        self.unreadable = ""  # the file is whole again, and says what the admin set since

    def _save(self) -> None:
        """Write-then-rename, so a crash never leaves half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(str(self.path), json.dumps(self.reasons, indent=2, sort_keys=True).encode(), 0o600)
