"""A Debian 12 root for the boot test: debootstrap once, cached outside the repo, copied per test.

The root is what a VM admin's freshly installed Debian 12 has (systemd, apt, adduser, python3) plus the
MariaDB server of the scenario, loaded with Istio's `test.ratings` data and listening on every address.
It holds everything the deb depends on, so installing the deb needs no network (the test proves it by
installing with no network at all).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.testbed.mariadb import RATINGS_SQL

SUITE = "bookworm"
MIRROR = os.environ.get("VMESH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# python3.11 and adduser are what the deb depends on; the rest is the VM's own world.
BASE = ["systemd", "systemd-sysv", "dbus", "adduser", "python3", "iproute2", "hostname", "procps", "ca-certificates"]
# Installed by apt in the chroot, services held back: debootstrap would start them on the host's network.
EXTRA = ["mariadb-server", "mariadb-client"]
PACKAGES = BASE + EXTRA
# Bump when the recipe below changes in a way the package list does not show.
RECIPE = "2"
# The VM name the agent uses by default (the hostname): objects are mysqldb-<it>-<hash> and vmesh-<it>.
HOSTNAME = "debian12"
CACHE = Path(os.environ.get("VMESH_CACHE", Path.home() / ".cache" / "vmesh-agent"))

# What the boot test changes in Debian's MariaDB configuration, and why; everything else (name resolution and
# the host cache, max_connect_errors, log_warnings) is the distribution's.
MARIADB_CNF = """\
# The boot test's MariaDB: reachable on the VM's address (the distribution default is 127.0.0.1 only), as
# the README tells the admin; a smaller buffer pool (memory: the test machine runs many things at once).
[mariadbd]
bind-address = 0.0.0.0
innodb_buffer_pool_size = 16M
"""


def hosts_file(address: str) -> str:
    """/etc/hosts as Debian's installer writes it (localhost, the hostname on 127.0.1.1), plus the VM's address
    under its name, which on a VM the DNS answers: MariaDB's reverse lookup of a client on that address gets a
    definite answer, so its host cache counts that client as on a real VM (a lookup that fails for want of a
    DNS server is never cached)."""
    return (f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n{address}\t{HOSTNAME}\n"
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
    (etc / "hosts").write_text(hosts_file(address))
    nsswitch = etc / "nsswitch.conf"
    lines = nsswitch.read_text().splitlines()
    nsswitch.write_text("".join(f"{'hosts:          files' if line.startswith('hosts:') else line}\n"
                                for line in lines))
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# the test network has no DNS server (tests/e2e/debian_root.py, resolve_definitely)\n"
                      "nameserver 127.0.0.1\n")


def cached_root() -> Path:
    """The cached, never-booted root (build it on first use, ~5 minutes); copy it before changing it."""
    key = hashlib.sha256(f"{SUITE} {RECIPE} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"debian12-root-{key}"
    if (root / ".vmesh-complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    # A failed build keeps its debootstrap result (the slow, network part) for the next try.
    building = CACHE / f"{root.name}.building"
    if not (building / ".vmesh-debootstrapped").exists():
        subprocess.run(["umount", "-l", str(building / "proc")], capture_output=True, check=False)  # killed mid-way
        shutil.rmtree(building, ignore_errors=True)
        _debootstrap(building)
        (building / ".vmesh-debootstrapped").touch()
    _configure(building)
    (building / ".vmesh-debootstrapped").unlink()
    (building / ".vmesh-complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root


def copy_root(dest: Path) -> Path:
    """A private copy of the cached root at `dest` (cp -a keeps owners, modes, xattrs and device nodes)."""
    source = cached_root()
    subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(dest)], check=True)
    (dest / ".vmesh-complete").unlink()
    # Written on every copy, so that a root cached before this recipe (with skip-name-resolve) is corrected too.
    (dest / "etc" / "mysql" / "mariadb.conf.d" / "90-vmesh-test.cnf").write_text(MARIADB_CNF)
    return dest


def _debootstrap(target: Path) -> None:
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BASE)}", SUITE, str(target), MIRROR],
        check=True, capture_output=True,
    )
    policy = target / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(target / "proc")], check=True)
    try:
        _chroot(target, "apt-get", "install", "-y", "-q", "--no-install-recommends", *EXTRA)
        _chroot(target, "apt-get", "clean")
    finally:
        subprocess.run(["umount", str(target / "proc")], check=True)
    policy.unlink()


def _chroot(root: Path, *args: str, input: str | None = None) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(["chroot", str(root), *args], capture_output=True, text=True, input=input, env=env,
                            check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)


def _configure(root: Path) -> None:
    (root / "etc" / "mysql" / "mariadb.conf.d" / "90-vmesh-test.cnf").write_text(MARIADB_CNF)
    (root / "etc" / "hostname").write_text(f"{HOSTNAME}\n")
    (root / "etc" / "machine-id").write_text("")  # each boot makes its own
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
