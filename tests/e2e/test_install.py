"""`pip install -e .` of this tree prints no warning (setuptools deprecations included), and neither does the
deb's build of its Python environment (tests/e2e/test_deb_boot.py checks build-deb's output the same way)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WARNING = re.compile(r"warning|deprecat", re.IGNORECASE)


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if WARNING.search(line)]


def test_editable_install_prints_no_warning(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "agent", tree / "agent", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    # A real build of the editable wheel's metadata, in pip's isolated build environment (setuptools fetched at
    # the version pyproject.toml's build-system asks for), without touching this environment.
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "-e", str(tree)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not warnings_in(result.stdout + result.stderr), result.stdout + result.stderr
