"""The deb bundles exactly packaging/requirements.lock: it must keep up with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    text = (ROOT / "packaging" / "requirements.lock").read_text().replace("\\\n", " ")  # pip's continuations
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)(\s+--hash=sha256:[0-9a-f]{64})+$", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
        else:
            assert line.startswith("#") or not line.strip(), f"not a pinned, hashed line: {line}"
    return pins


def test_lock_pins_every_runtime_dependency_at_an_allowed_version() -> None:
    pins = _locked()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in declared:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"locked {name}=={pins[name]} does not satisfy {spec}"
