"""agent/interpreter.py: the deb's compiled modules, loaded for the running CPython or not, and what status says."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from agent import interpreter

RUNNING = ".".join(platform.python_version_tuple()[:2])
# Compiled modules of the test environment's own libraries (the same the deb bundles).
REAL = ["multidict._multidict", "yarl._quoting_c", "frozenlist._frozenlist"]


def _manifest(tmp_path: Path, pythons: list[str], modules: list[str]) -> Path:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"pythons": pythons, "compiled": {m: pythons for m in modules}}))
    return path


def test_every_compiled_module_loads_for_a_python_the_deb_was_built_for(tmp_path: Path) -> None:
    found = interpreter.inspect(_manifest(tmp_path, ["3.11", "3.12", "3.13", "3.14"], REAL))
    assert found.packaged and found.loaded == tuple(REAL) and not found.failed
    assert found.problem == ""
    assert found.abi.startswith(".cpython-") and found.abi.endswith(".so")


def test_a_newer_python_runs_on_the_pure_python_fallbacks_and_says_so(tmp_path: Path) -> None:
    older = [v for v in ("3.9", "3.10") if v != RUNNING]
    found = interpreter.inspect(_manifest(tmp_path, older, [*REAL, "multidict._not_for_this_python"]))
    assert "multidict._not_for_this_python" in found.failed
    assert f"Python {RUNNING} is newer than this deb was built for" in found.problem
    assert "pure Python" in found.problem
    assert found.as_dict()["problem"] == found.problem


def test_a_module_missing_for_a_supported_python_is_named(tmp_path: Path) -> None:
    found = interpreter.inspect(_manifest(tmp_path, [RUNNING], [*REAL, "multidict._gone"]))
    assert found.loaded == tuple(REAL)
    assert found.problem.startswith("1 of 4 compiled modules did not load: multidict._gone")


def test_a_pure_python_module_in_place_of_a_compiled_one_is_not_counted_as_loaded(tmp_path: Path) -> None:
    found = interpreter.inspect(_manifest(tmp_path, [RUNNING], ["multidict._multidict_py"]))
    assert "not a .cpython-" in found.failed["multidict._multidict_py"]


def test_outside_the_deb_nothing_is_checked(tmp_path: Path) -> None:
    found = interpreter.inspect(tmp_path / "absent.json")
    assert not found.packaged and found.problem == "" and found.loaded == ()
