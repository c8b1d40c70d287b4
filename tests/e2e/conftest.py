"""The debs the e2e tests install, built once per session from this tree (and one from the previous release)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_install import warnings_in

ROOT = Path(__file__).resolve().parents[2]
BUILD_DEB = ROOT / "packaging" / "build-deb"
# The last commit before the deb ran on any python3 (it depended on python3.11, a venv in lib/python3.11): the
# release VMs on Debian 12 upgrade from. Its own build-deb builds it, from its own lock and the same wheel cache.
PREVIOUS_RELEASE = "0a342ad"


@dataclass(frozen=True)
class Debs:
    amd64: Path  # this tree, revision 1
    newer: Path  # this tree, revision 2: the upgrade
    arm64: Path  # this tree, revision 1, for arm64
    previous: Path  # PREVIOUS_RELEASE, amd64


def build_deb(out: Path, *args: str, tree: Path = ROOT) -> Path:
    # The test environment's python runs pip (an old tree has no .venv of its own).
    result = subprocess.run([str(tree / "packaging" / "build-deb"), "--out", str(out), *args], capture_output=True,
                            text=True, timeout=900, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                     "HOME": str(Path.home()),
                                                                     "PYTHON": sys.executable})
    assert result.returncode == 0, f"build-deb {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    assert not warnings_in(result.stdout + result.stderr), f"build-deb warned:\n{result.stderr[-3000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


def _previous_release(tmp: Path) -> Path:
    tree = tmp / "previous"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE], capture_output=True, check=False)
    assert archive.returncode == 0, (f"cannot read the previous release {PREVIOUS_RELEASE} from git (a shallow "
                                     f"clone?): {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return build_deb(tmp / "out", tree=tree)


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    out = tmp_path_factory.mktemp("debs")
    return Debs(amd64=build_deb(out, "--arch", "amd64", "--revision", "1"),
                newer=build_deb(out, "--arch", "amd64", "--revision", "2"),
                arm64=build_deb(out, "--arch", "arm64", "--revision", "1"),
                previous=_previous_release(tmp_path_factory.mktemp("previous")))
