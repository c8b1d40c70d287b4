"""Debian roots for the boot tests: debootstrap once per release and architecture, cached outside the repo,
copied per test.

A root is what a VM admin's freshly installed Debian has (systemd, apt, adduser, python3) plus the MariaDB
server of the scenario, loaded with Istio's `test.ratings` data and listening on every address. It holds
everything the deb depends on, so installing the deb needs no network (the tests install with no network at
all). A root of another architecture (arm64) is built and run under qemu-user-static through binfmt_misc.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.mariadb import RATINGS_SQL

# adduser and python3 are what the deb depends on; the rest is the VM's own world.
BASE = ["systemd", "systemd-sysv", "dbus", "adduser", "python3", "iproute2", "hostname", "procps", "ca-certificates"]
# Installed by apt in the chroot, services held back: debootstrap would start them on the host's network.
MARIADB = ("mariadb-server", "mariadb-client")
# Bump when the recipe below changes in a way the package list does not show.
RECIPE = "3"
CACHE = Path(os.environ.get("VMESH_CACHE", Path.home() / ".cache" / "vmesh-agent"))
# Where a root keeps the .deb of its python3-minimal (the package that installs /usr/bin/python3).
PYTHON_DEBS = Path("/var/cache/vmesh-test")
HOST_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
                *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]


@dataclass(frozen=True)
class Release:
    """A Debian release on one architecture, as a VM admin installs it."""

    suite: str  # bookworm, trixie
    arch: str  # amd64, arm64 (foreign: run under qemu-user-static)
    python: str  # the version of its python3
    hostname: str  # the VM's name: the agent's objects are mysqldb-<it>-<hash> and vmesh-<it>
    extra: tuple[str, ...] = MARIADB  # the VM's service

    @property
    def foreign(self) -> bool:
        return self.arch != _host_arch()


BOOKWORM = Release("bookworm", "amd64", "3.11", "debian12")
TRIXIE = Release("trixie", "amd64", "3.13", "debian13")
# No MariaDB under emulation: its InnoDB start under qemu-user falls back from io_uring and native AIO (ENOSYS)
# and had not finished after 120 s. The arm64 VM serves HTTP with its own python3 instead.
TRIXIE_ARM64 = Release("trixie", "arm64", "3.13", "debian13-arm64", extra=())


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def host_mirror(sources: list[Path] = HOST_SOURCES) -> str:
    """The Debian mirror this machine's own apt uses (VMESH_DEBIAN_MIRROR wins): the first source of the
    main archive, i.e. one with a Debian release suite in `main` that is not the security archive."""
    if os.environ.get("VMESH_DEBIAN_MIRROR"):
        return os.environ["VMESH_DEBIAN_MIRROR"]
    for path in sources:
        if not path.exists():
            continue
        for uri, suites in _sources(path.read_text()):
            if any(re.fullmatch(r"(bookworm|trixie|forky|sid|stable|oldstable|testing|unstable)", s) for s in suites):
                return uri.rstrip("/")
    raise RuntimeError("no Debian archive in this machine's apt sources (/etc/apt/sources.list*): "
                       "set VMESH_DEBIAN_MIRROR to a Debian mirror's URI")


def _sources(text: str) -> list[tuple[str, list[str]]]:
    """(URI, suites) of each source in a one-line-style .list or a deb822 .sources file."""
    found = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            found.append((words[1], [words[2]]))
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, flags=re.M))
        if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
            for uri in fields.get("URIs", "").split():
                found.append((uri, fields.get("Suites", "").split()))
    return found


# What the boot test changes in Debian's MariaDB configuration, and why; everything else (name resolution and
# the host cache, max_connect_errors, log_warnings) is the distribution's.
MARIADB_CNF = """\
# The boot test's MariaDB: reachable on the VM's address (the distribution default is 127.0.0.1 only), as
# the README tells the admin; a smaller buffer pool (memory: the test machine runs many things at once).
[mariadbd]
bind-address = 0.0.0.0
innodb_buffer_pool_size = 16M
"""


def hosts_file(address: str, hostname: str) -> str:
    """/etc/hosts as Debian's installer writes it (localhost, the hostname on 127.0.1.1), plus the VM's address
    under its name, which on a VM the DNS answers: MariaDB's reverse lookup of a client on that address gets a
    definite answer, so its host cache counts that client as on a real VM (a lookup that fails for want of a
    DNS server is never cached)."""
    return (f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n{address}\t{hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")


def resolve_definitely(root: Path, address: str) -> None:
    """Name resolution in the root that answers at once, as a VM's DNS does (a name, or "no such name").

    Departs from Debian's `hosts: files dns` because the test network has no DNS server: the root's
    resolv.conf is the build host's, unreachable from the VM's namespace, so every lookup of an address not in
    /etc/hosts (a pod's client on the node) would wait for the resolver's time-out ("Temporary failure in name
    resolution") and MariaDB, which resolves each client before its greeting, would stall every connection by
    that long. `hosts: files` answers from /etc/hosts alone; the resolver points at the container's own
    loopback, so nothing in it sends a DNS query off the test network."""
    etc = root / "etc"
    (etc / "hosts").write_text(hosts_file(address, (etc / "hostname").read_text().strip()))
    nsswitch = etc / "nsswitch.conf"
    lines = nsswitch.read_text().splitlines()
    nsswitch.write_text("".join(f"{'hosts:          files' if line.startswith('hosts:') else line}\n"
                                for line in lines))
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# the test network has no DNS server (tests/e2e/debian_root.py, resolve_definitely)\n"
                      "nameserver 127.0.0.1\n")


def cached_root(release: Release) -> Path:
    """The cached, never-booted root of `release` (built on first use: ~5 minutes, more under emulation);
    copy it before changing it."""
    if release.foreign:
        register_binfmt(release.arch)
    packages = " ".join(BASE + list(release.extra))
    key = hashlib.sha256(f"{release.suite} {release.arch} {RECIPE} {packages}".encode()).hexdigest()[:12]
    root = CACHE / f"debian-{release.suite}-{release.arch}-root-{key}"
    if (root / ".vmesh-complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    # A failed build keeps its debootstrap result (the slow, network part) for the next try.
    building = CACHE / f"{root.name}.building"
    if not (building / ".vmesh-debootstrapped").exists():
        subprocess.run(["umount", "-l", str(building / "proc")], capture_output=True, check=False)  # killed mid-way
        shutil.rmtree(building, ignore_errors=True)
        _debootstrap(building, release)
        (building / ".vmesh-debootstrapped").touch()
    _configure(building, release)
    (building / ".vmesh-debootstrapped").unlink()
    (building / ".vmesh-complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root


def copy_root(dest: Path, release: Release) -> Path:
    """A private copy of the cached root at `dest` (cp -a keeps owners, modes, xattrs and device nodes)."""
    source = cached_root(release)
    subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(dest)], check=True)
    (dest / ".vmesh-complete").unlink()
    return dest


BINFMT = Path("/proc/sys/fs/binfmt_misc")


def register_binfmt(arch: str) -> None:
    """Let this machine's kernel run `arch`'s programs through Debian's qemu-user-static, as its package does on
    a host with systemd-binfmt or binfmt-support (this one has neither): mount binfmt_misc, then register the
    package's own entry. Its F flag opens the emulator now, so programs run in a chroot without a copy of it."""
    name = {"arm64": "aarch64"}[arch]
    if (BINFMT / f"qemu-{name}").exists():
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    entry = Path(f"/usr/lib/binfmt.d/qemu-{name}.conf")
    if not entry.exists():
        raise RuntimeError(f"{entry} is missing: install Debian's qemu-user-static (scripts/bootstrap does)")
    line = next(line for line in entry.read_text().splitlines() if line.startswith(":"))
    (BINFMT / "register").write_text(line)


def _debootstrap(target: Path, release: Release) -> None:
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--arch={release.arch}", f"--include={','.join(BASE)}", release.suite,
         str(target), host_mirror()],
        check=True, capture_output=True,
    )
    policy = target / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(target / "proc")], check=True)
    try:
        if release.extra:
            _chroot(target, "apt-get", "install", "-y", "-q", "--no-install-recommends", *release.extra)
        _chroot(target, "apt-get", "clean")
        # The interpreter's own package, for the test of the deb's trigger (what a distribution upgrade installs).
        (target / PYTHON_DEBS.relative_to("/")).mkdir(parents=True)
        _chroot(target, "sh", "-c", f"cd {PYTHON_DEBS} && apt-get download -q python3-minimal")
    finally:
        subprocess.run(["umount", str(target / "proc")], check=True)
    policy.unlink()


def _chroot(root: Path, *args: str, input: str | None = None) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(["chroot", str(root), *args], capture_output=True, text=True, input=input, env=env,
                            check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)


def _configure(root: Path, release: Release) -> None:
    (root / "etc" / "hostname").write_text(f"{release.hostname}\n")
    (root / "etc" / "machine-id").write_text("")  # each boot makes its own
    if MARIADB[0] in release.extra:
        (root / "etc" / "mysql" / "mariadb.conf.d" / "90-vmesh-test.cnf").write_text(MARIADB_CNF)
        _load_ratings(root)


def _load_ratings(root: Path) -> None:
    """Start the root's own mariadbd in the chroot with no networking, load test.ratings, stop it."""
    run_dir = root / "run" / "mysqld"
    run_dir.mkdir(parents=True, exist_ok=True)
    _chroot(root, "chown", "mysql:mysql", "/run/mysqld")
    server = subprocess.Popen(
        ["chroot", str(root), "mariadbd", "--user=mysql", "--skip-networking", "--socket=/run/mysqld/mysqld.sock",
         "--pid-file=/run/mysqld/mysqld.pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        sql = ";\n".join(RATINGS_SQL) + ";\n"
        for _ in range(100):
            try:
                _chroot(root, "mariadb", "--socket=/run/mysqld/mysqld.sock", "-uroot", input=sql)
                break
            except subprocess.CalledProcessError:
                if server.poll() is not None:
                    raise
                time.sleep(0.3)
        else:
            raise AssertionError("the root's mariadbd never accepted the ratings data")
    finally:
        server.terminate()
        server.wait(timeout=60)
    shutil.rmtree(run_dir, ignore_errors=True)


RELEASES = (BOOKWORM, TRIXIE, TRIXIE_ARM64)

if __name__ == "__main__":  # scripts/bootstrap: build every root the e2e tests use, while the Go builds run
    for release in RELEASES:
        began = time.monotonic()
        print(f"{cached_root(release)} ({time.monotonic() - began:.0f} s)", flush=True)
