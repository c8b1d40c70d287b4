"""What the debs carry, checked without booting them: lintian, the compiled modules of every CPython for both
architectures, a reproducible build, and the launcher on this machine's own Debian python3.11 (a supported
Python, and one made to look newer than the deb was built for)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PREVIOUS_RELEASE, ROOT, Debs, build_deb

PYTHONS = ["3.11", "3.12", "3.13", "3.14"]
TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
# The Debian interpreter of the machine that runs the tests (scripts/bootstrap's host is Debian 12).
HOST_PYTHON = Path("/usr/bin/python3.11")


def _extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_lintian_reports_no_errors_or_warnings(debs: Debs, arch: str) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error,warning", str(getattr(debs, arch))],
                            capture_output=True, text=True, timeout=300, check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert result.returncode == 0 and not tags, result.stdout + result.stderr


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_every_compiled_module_is_there_for_every_cpython(debs: Debs, arch: str, tmp_path: Path) -> None:
    deb = getattr(debs, arch)
    assert _field(deb, "Architecture") == arch
    assert _field(deb, "Depends").startswith("python3 (>= 3.11~), ")
    lib = _extract(deb, tmp_path) / "usr/lib/vmesh-agent"
    manifest = json.loads((lib / "bundle.json").read_text())
    assert manifest["pythons"] == PYTHONS
    assert len(manifest["compiled"]) == 8, manifest  # aiohttp 4, frozenlist, multidict, propcache, yarl
    for module, pythons in manifest["compiled"].items():
        assert pythons == PYTHONS, module
        for python in PYTHONS:
            abi = f"cpython-{python.replace('.', '')}-{TRIPLETS[arch]}"
            so = lib / "site-packages" / f"{module.replace('.', '/')}.{abi}.so"
            assert so.is_file(), so
            machine = subprocess.run(["readelf", "-h", str(so)], capture_output=True, text=True, check=True).stdout
            assert ("AArch64" if arch == "arm64" else "X86-64") in machine, so
    shipped = sorted(p.name for p in (lib / "site-packages").rglob("*.so"))
    assert len(shipped) == 8 * len(PYTHONS), shipped
    triggers = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"interest-noawait /usr/bin/python3" in triggers


def test_the_build_is_reproducible(debs: Debs, tmp_path: Path) -> None:
    again = build_deb(tmp_path, "--arch", "amd64", "--revision", "1")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(debs.amd64.read_bytes()).hexdigest()


def test_the_deb_ships_the_monitoring_files(debs: Debs, tmp_path: Path) -> None:
    """packaging/monitoring's rules, dashboard, scrape example and README, as they are in the tree."""
    shipped = _extract(debs.amd64, tmp_path) / "usr/share/vmesh-agent/monitoring"
    names = ["README.md", "prometheus-scrape.example.yml", "vmesh-agent-dashboard.json", "vmesh-agent.rules.yml"]
    assert sorted(p.name for p in shipped.iterdir()) == names
    for name in names:
        assert (shipped / name).read_bytes() == (ROOT / "packaging/monitoring" / name).read_bytes(), name


def _version(lib: Path) -> dict[str, Any]:
    """`vmesh-agent version --json` as /usr/bin/vmesh-agent runs it, on this machine's Debian python3.11."""
    result = subprocess.run([str(HOST_PYTHON), "-I", "-S", str(lib / "launcher.py"), "agent", "version", "--json"],
                            capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert result.returncode == 0, result.stderr
    python: dict[str, Any] = json.loads(result.stdout)["python"]
    return python


def test_the_launcher_loads_every_compiled_module_on_debian_python(debs: Debs, tmp_path: Path) -> None:
    if not HOST_PYTHON.exists():
        pytest.fail(f"{HOST_PYTHON} is missing: scripts/bootstrap runs on Debian 12, whose python3 it is")
    lib = _extract(debs.amd64, tmp_path) / "usr/lib/vmesh-agent"
    python = _version(lib)
    assert str(python["version"]).startswith("3.11.") and python["executable"] == str(HOST_PYTHON)
    assert python["compiled_failed"] == {} and len(python["compiled_loaded"]) == 8, python
    assert python["problem"] is None


def test_a_python_newer_than_the_deb_runs_on_the_fallbacks_and_says_so(debs: Debs, tmp_path: Path) -> None:
    """The deb as a CPython it was not built for sees it: its ABI's modules absent, itself absent from the list."""
    lib = _extract(debs.amd64, tmp_path) / "usr/lib/vmesh-agent"
    for so in (lib / "site-packages").rglob("*.cpython-311-x86_64-linux-gnu.so"):
        so.unlink()
    manifest = json.loads((lib / "bundle.json").read_text())
    manifest["pythons"] = ["3.9", "3.10"]
    (lib / "bundle.json").write_text(json.dumps(manifest))
    python = _version(lib)
    assert len(python["compiled_failed"]) == 8 and python["compiled_loaded"] == [], python
    assert "Python 3.11 is newer than this deb was built for (3.9, 3.10)" in str(python["problem"])
    # It still works: the agent's own command line runs on the pure-Python libraries.
    checked = subprocess.run([str(HOST_PYTHON), "-I", "-S", str(lib / "launcher.py"), "agent", "check-config",
                              str(ROOT / "config.example.toml")], capture_output=True, text=True, check=False)
    assert "Traceback" not in checked.stderr, checked.stderr


def test_the_launcher_sees_no_other_python_packages(debs: Debs, tmp_path: Path) -> None:
    """-I -S: neither Debian's dist-packages nor PYTHONPATH can put another aiohttp under the agent."""
    lib = _extract(debs.amd64, tmp_path) / "usr/lib/vmesh-agent"
    decoy = tmp_path / "decoy"
    (decoy / "aiohttp").mkdir(parents=True)
    (decoy / "aiohttp" / "__init__.py").write_text("raise SystemExit('the decoy aiohttp was imported')\n")
    result = subprocess.run([str(HOST_PYTHON), "-I", "-S", str(lib / "launcher.py"), "agent", "version"],
                            capture_output=True, text=True, check=False, env={"PYTHONPATH": str(decoy)})
    assert result.returncode == 0 and "decoy" not in result.stderr, result.stderr
    shutil.rmtree(decoy)


def test_the_shipped_conffile_is_the_previous_releases() -> None:
    """/etc/vmesh-agent/config.toml is a conffile that every admin edits: any change to the shipped one (a comment
    too) makes `apt-get install` of the upgrade stop at dpkg's conffile prompt, and unattended-upgrades hold the
    package back. It failed the booted upgrade test once (a comment added to config.example.toml). Change it only
    with a release that says so, and move PREVIOUS_RELEASE with it."""
    before = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS_RELEASE}:config.example.toml"],
                            capture_output=True, text=True, check=True).stdout
    assert (ROOT / "config.example.toml").read_text() == before, (
        f"config.example.toml differs from {PREVIOUS_RELEASE}'s: upgrades would stop at a conffile prompt")
