"""The Python the agent runs on, and whether the deb's compiled modules load for it.

The deb carries each compiled module of its libraries once per CPython it was built for (packaging/bundle.py
writes the list to /usr/lib/vmesh-agent/bundle.json). On one of those, every module must load; on a newer
CPython the deb was not built for, the libraries fall back to their pure-Python code: the agent works, more
slowly, and `status` says so. Outside the deb (a source checkout) there is no list and nothing to check.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# /usr/lib/vmesh-agent/bundle.json, beside site-packages/agent/.
BUNDLE_MANIFEST = Path(__file__).resolve().parents[2] / "bundle.json"


@dataclass(frozen=True)
class Interpreter:
    version: str  # 3.13.5
    executable: str
    abi: str  # the suffix this interpreter's compiled modules carry: .cpython-313-x86_64-linux-gnu.so
    built_for: tuple[str, ...]  # the CPythons the deb carries compiled modules for; () outside the deb
    loaded: tuple[str, ...]
    failed: dict[str, str]  # module -> why it did not load

    @property
    def packaged(self) -> bool:
        return bool(self.built_for)

    @property
    def problem(self) -> str:
        """Empty when every bundled compiled module loads (or outside the deb);
        else what to tell the admin."""
        if not self.failed:
            return ""
        minor = ".".join(self.version.split(".")[:2])
        if minor not in self.built_for:
            return (f"Python {minor} is newer than this deb was built for ({', '.join(self.built_for)}): "
                    f"{len(self.failed)} compiled modules run as pure Python (slower); "
                    "install a newer vmesh-agent")
        return f"{len(self.failed)} of {len(self.failed) + len(self.loaded)} compiled modules " \
            "did not load: " + "; ".join(f"{module}: {why}" for module, why in sorted(self.failed.items()))

    def as_dict(self) -> dict[str, object]:
        return {"version": self.version, "executable": self.executable, "abi": self.abi,
                "built_for": list(self.built_for), "compiled_loaded": list(self.loaded),
                "compiled_failed": self.failed, "problem": self.problem or None}


def inspect(manifest: Path = BUNDLE_MANIFEST) -> Interpreter:
    """Import each compiled module the deb carries (the libraries have imported most already: cheap)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    try:
        bundle = json.loads(manifest.read_text())
    except OSError:
        bundle = {}
    loaded, failed = [], {}
    for module in bundle.get("compiled", {}):
        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            failed[module] = str(exc) or type(exc).__name__
            continue
        if str(getattr(found, "__file__", "")).endswith(suffix):
            loaded.append(module)
        else:  # a pure-Python module of the same name shadows it
            failed[module] = f"imported {getattr(found, '__file__', '?')}, not a {suffix} module"
    return Interpreter(version=platform.python_version(), executable=sys.executable, abi=suffix,
                       built_for=tuple(bundle.get("pythons", ())), loaded=tuple(loaded), failed=failed)
