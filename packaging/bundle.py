#!/usr/bin/env python3
"""The deb's Python libraries: the pinned wheels for every CPython the supported distributions ship, merged
into one site-packages that each interpreter imports its own compiled modules from.

    packaging/bundle.py build --arch amd64 --out SITE --manifest FILE   (packaging/build-deb runs it)
    packaging/bundle.py lock                                          (rewrite requirements.lock's hashes)

Only a few of the locked libraries are compiled (aiohttp, frozenlist, multidict, propcache, pyyaml, yarl), and
their wheels for CPython 3.11 ... 3.14 differ only in those modules, whose file names carry the ABI
(`_multidict.cpython-313-x86_64-linux-gnu.so`, PEP 3149): so one tree holds all of them side by side, the way
Debian ships extension modules for several Python versions. `build` installs each ABI's wheels into a tree of
its own and fails unless the trees are byte-identical in everything but their compiled modules and the tags in
their dist-info/WHEEL, then writes the union and a manifest of which compiled module exists for which ABI (the
agent's `status` reads it: agent/interpreter.py). Standard library only: it runs on the build machine's python3.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "packaging" / "requirements.lock"
# Debian 12, Ubuntu 24.04, Debian 13, Ubuntu 26.04 (docs: packaging/README.md, "Which Python").
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# A compiled module of one ABI: name.cpython-313-x86_64-linux-gnu.so (abi3 modules are the same file for all).
COMPILED = re.compile(r"^(?P<module>.+)\.cpython-(?P<abi>\d+)-(?P<triplet>[a-z0-9_]+-linux-gnu)\.so$")
# Compiled modules left out of the deb, and why (their libraries fall back or never import them).
LEFT_OUT = {
    "yaml._yaml": "PyYAML's C speedup embeds libyaml (lintian: embedded-library); the agent reads at most a "
                  "kubeconfig, with the pure-Python parser",
    "multidict._testcapi": "a helper of multidict's own test suite",
}
# Per-install bookkeeping pip writes that is not the library: differs between trees, read by no one here.
BOOKKEEPING = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def pip_target(python: str, arch: str) -> list[str]:
    """pip's options for the wheels of CPython `python` on `arch`'s glibc (manylinux), compiled or pure."""
    machine = MACHINES[arch]
    platforms = ["manylinux_2_28", "manylinux_2_17", "manylinux2014"]
    if machine == "x86_64":
        platforms += ["manylinux_2_12", "manylinux_2_5"]
    tag = "cp" + python.replace(".", "")
    options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python,
               "--abi", tag, "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        options += ["--platform", f"{platform}_{machine}"]
    return options


def _pip(python: str, *args: str) -> None:
    result = subprocess.run([python, "-m", "pip", "-q", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bundle: pip {' '.join(args[:2])} failed:\n{result.stdout}{result.stderr}")


def install(arch: str, wheels: Path, work: Path, pip_python: str) -> dict[str, Path]:
    """One `pip install --target` tree per ABI, from the wheel cache (filled from the index when short)."""
    trees = {}
    for python in PYTHONS:
        target = pip_target(python, arch)
        common = ["--no-deps", "--require-hashes", "--dest", str(wheels), *target, "-r", str(LOCK)]
        try:
            _pip(pip_python, "download", "--no-index", "--find-links", str(wheels), *common)
        except SystemExit:
            print(f"[bundle] fetching the pinned wheels for CPython {python} on {arch} into {wheels}", file=sys.stderr)
            _pip(pip_python, "download", *common)
        tree = work / f"cp{python.replace('.', '')}"
        _pip(pip_python, "install", "--no-deps", "--require-hashes", "--no-index", "--find-links", str(wheels),
             "--no-compile", "--target", str(tree), *target, "-r", str(LOCK))
        trees[python] = tree
    return trees


def _files(tree: Path) -> dict[str, Path]:
    return {p.relative_to(tree).as_posix(): p for p in tree.rglob("*") if p.is_file() or p.is_symlink()}


def _wheel_tags(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("Tag: ")]


def merge(trees: dict[str, Path], out: Path) -> dict[str, Any]:
    """Check that the per-ABI trees differ only in their compiled modules, then write their union to `out`.

    Returns the manifest: the interpreters, and for each compiled module the ABIs it exists for."""
    problems: list[str] = []
    listings = {python: _files(tree) for python, tree in trees.items()}
    shared: dict[str, dict[str, Path]] = {}
    compiled: dict[str, dict[str, str]] = defaultdict(dict)  # module path -> abi -> file path
    for python, files in listings.items():
        own_abi = python.replace(".", "")
        kept = {}
        for rel, path in files.items():
            name = rel.rsplit("/", 1)[-1]
            match = COMPILED.match(rel)
            if match and match.group("module").replace("/", ".") in LEFT_OUT:
                continue
            if match:
                if match.group("abi") != own_abi:
                    problems.append(f"{rel}: a CPython {match.group('abi')} module in the {python} tree")
                compiled[match.group("module")][python] = rel
            elif not (".dist-info/" in rel and name in BOOKKEEPING):
                kept[rel] = path
        shared[python] = kept
    first, *others = PYTHONS
    for python in others:
        for rel in sorted(shared[first].keys() ^ shared[python].keys()):
            where = first if rel in shared[first] else python
            problems.append(f"{rel}: only in the {where} tree")
        for rel in sorted(shared[first].keys() & shared[python].keys()):
            a, b = shared[first][rel], shared[python][rel]
            if rel.endswith(".dist-info/WHEEL"):
                a_text = [line for line in a.read_text().splitlines() if not line.startswith("Tag: ")]
                b_text = [line for line in b.read_text().splitlines() if not line.startswith("Tag: ")]
                same = a_text == b_text
            else:
                same = filecmp.cmp(a, b, shallow=False)
            if not same:
                problems.append(f"{rel}: differs between the {first} and {python} trees")
    for module, abis in sorted(compiled.items()):
        missing = [python for python in PYTHONS if python not in abis]
        if missing:
            problems.append(f"{module}: compiled for {', '.join(sorted(abis))} but not for {', '.join(missing)}")
    if problems:
        raise SystemExit("bundle: the per-ABI wheels differ in more than their compiled modules:\n  "
                         + "\n  ".join(problems[:40]))
    for rel, path in shared[first].items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".dist-info/WHEEL"):  # every ABI's tags: the wheels this directory was made of
            text = [line for line in path.read_text().splitlines() if not line.startswith("Tag: ")]
            tags = sorted({tag for python in PYTHONS for tag in _wheel_tags(trees[python] / rel)})
            dest.write_text("\n".join(text + tags) + "\n")
        else:
            shutil.copy2(path, dest)
    for abis in compiled.values():
        for python, rel in abis.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(trees[python] / rel, out / rel)
    return {"pythons": list(PYTHONS),
            "compiled": {module.replace("/", "."): sorted(abis) for module, abis in sorted(compiled.items())}}


def build(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as work:
        trees = install(args.arch, args.wheels, Path(work), args.pip_python)
        manifest = merge(trees, args.out)
    args.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    count = len(manifest["compiled"])
    print(f"[bundle] {args.out}: CPython {', '.join(PYTHONS)} on {args.arch}, {count} compiled modules each",
          file=sys.stderr)


def lock(args: argparse.Namespace) -> None:
    """Rewrite requirements.lock with the sha256 of every wheel a build takes (each pin, each ABI, each arch)."""
    lines = LOCK.read_text().replace("\\\n", " ").splitlines()
    header = [line for line in lines if line.startswith("#")]
    pins = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    hashes: dict[str, set[str]] = defaultdict(set)
    with tempfile.TemporaryDirectory() as work:
        for arch in MACHINES:
            for python in PYTHONS:
                dest = Path(work) / f"{arch}-{python}"
                _pip(args.pip_python, "download", "--no-deps", "--dest", str(dest), *pip_target(python, arch), *pins)
                for wheel in dest.iterdir():
                    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
                    hashes[name].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
                    shutil.copy2(wheel, args.wheels / wheel.name)
    lines = header
    for pin in pins:
        name = re.sub(r"[-_.]+", "-", pin.split("==")[0]).lower()
        lines.append(" \\\n".join([pin, *(f"    --hash=sha256:{h}" for h in sorted(hashes[name]))]))
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"[bundle] {LOCK}: {len(pins)} pins, {sum(map(len, hashes.values()))} wheels", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, default=Path.home() / ".cache" / "vmesh-agent" / "wheels",
                        help="the wheel cache (default ~/.cache/vmesh-agent/wheels)")
    parser.add_argument("--pip-python", default=sys.executable, help="the python whose pip downloads the wheels")
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="merge every ABI's wheels into one site-packages")
    b.add_argument("--arch", choices=sorted(MACHINES), required=True)
    b.add_argument("--out", type=Path, required=True, help="the site-packages directory to fill")
    b.add_argument("--manifest", type=Path, required=True, help="where to write the compiled modules' manifest")
    commands.add_parser("lock", help="rewrite requirements.lock's hashes for every ABI and architecture")
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    build(args) if args.command == "build" else lock(args)


if __name__ == "__main__":
    main()
