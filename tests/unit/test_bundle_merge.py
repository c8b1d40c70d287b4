"""packaging/bundle.py's merge: one site-packages from the per-ABI trees, refused when they differ in more than
their compiled modules (a library whose pure-Python code differs by ABI cannot share one tree)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bundle() -> ModuleType:
    # Loaded by path: packaging/ is not a package (the name is PyPI's `packaging`).
    spec = importlib.util.spec_from_file_location("vmesh_bundle", ROOT / "packaging" / "bundle.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle = _bundle()


def _trees(tmp_path: Path) -> dict[str, Path]:
    trees = {}
    for python in bundle.PYTHONS:
        abi = python.replace(".", "")
        tree = tmp_path / f"cp{abi}"
        files = {
            "lib/__init__.py": "from lib._speedups import fast\n",
            f"lib/_speedups.cpython-{abi}-x86_64-linux-gnu.so": f"ELF for {abi}",
            "lib/_speedups.pyx": "def fast(): pass\n",
            "lib-1.0.dist-info/METADATA": "Name: lib\nVersion: 1.0\n",
            "lib-1.0.dist-info/WHEEL": f"Wheel-Version: 1.0\nTag: cp{abi}-cp{abi}-manylinux_2_17_x86_64\n",
            "lib-1.0.dist-info/RECORD": f"lib/_speedups.cpython-{abi}-x86_64-linux-gnu.so,,\n",
            f"yaml/_yaml.cpython-{abi}-x86_64-linux-gnu.so": "embeds libyaml",
            "pure.py": "x = 1\n",
        }
        for rel, text in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_text(text)
        trees[python] = tree
    return trees


def test_trees_that_differ_only_in_compiled_modules_merge_into_one(tmp_path: Path) -> None:
    out = tmp_path / "site"
    manifest = bundle.merge(_trees(tmp_path), out)
    abis = [p.replace(".", "") for p in bundle.PYTHONS]
    assert sorted(p.name for p in (out / "lib").iterdir()) == sorted(
        ["__init__.py", "_speedups.pyx", *(f"_speedups.cpython-{a}-x86_64-linux-gnu.so" for a in abis)])
    assert (out / "lib/_speedups.cpython-313-x86_64-linux-gnu.so").read_text() == "ELF for 313"
    assert manifest == {"pythons": list(bundle.PYTHONS), "compiled": {"lib._speedups": list(bundle.PYTHONS)}}
    json.dumps(manifest)
    assert not (out / "lib-1.0.dist-info/RECORD").exists()
    assert not (out / "yaml").exists(), "a left-out module was shipped"
    tags = [line for line in (out / "lib-1.0.dist-info/WHEEL").read_text().splitlines() if line.startswith("Tag:")]
    assert len(tags) == len(bundle.PYTHONS)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: (t["3.13"] / "pure.py").write_text("x = 2\n"), "pure.py: differs between the 3.11 and 3.13 trees"),
    (lambda t: (t["3.12"] / "extra.py").write_text(""), "extra.py: only in the 3.12 tree"),
    (lambda t: (t["3.14"] / "lib/_speedups.cpython-314-x86_64-linux-gnu.so").unlink(),
     "lib/_speedups: compiled for 3.11, 3.12, 3.13 but not for 3.14"),
    (lambda t: (t["3.11"] / "lib/_other.cpython-312-x86_64-linux-gnu.so").write_text(""),
     "a CPython 312 module in the 3.11 tree"),
    (lambda t: (t["3.12"] / "lib-1.0.dist-info/WHEEL").write_text("Wheel-Version: 2.0\n"),
     "lib-1.0.dist-info/WHEEL: differs"),
])
def test_any_other_difference_fails_the_build(tmp_path: Path, change: object, expected: str) -> None:
    trees = _trees(tmp_path)
    assert callable(change)
    change(trees)
    with pytest.raises(SystemExit) as failed:
        bundle.merge(trees, tmp_path / "site")
    assert expected in str(failed.value)
    assert not (tmp_path / "site").exists(), "a half-merged tree was written"
