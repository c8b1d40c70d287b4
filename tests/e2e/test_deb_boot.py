"""The deb on a real Debian 12 and 13, booted by their own systemd: what a VM admin does, start to finish.

A debootstrap'd root of each release (tests/e2e/debian_root.py) with MariaDB and Istio's ratings data gets
the deb by `apt-get install ./vmesh-agent_*.deb` with no network, the admin's config edits and a
ServiceAccount token; it then boots with systemd-nspawn inside a simulated VM's network namespace, and every
step of the package's life is checked against the real control plane: on Debian 12 the previous release
first, then the upgrade to this tree's deb; on Debian 13 (where the previous release cannot install) this
tree's deb. Then on both: boot → registered on the distribution's python3 with every compiled module loaded,
stop/start, power-off, upgrade, python3 changed under the running agent, a broken config, purge.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.e2e.admin import UNIT, endpoints, journal, point_config_at_cluster
from tests.e2e.conftest import Debs
from tests.e2e.container import Container, chroot
from tests.e2e.debian_root import BOOKWORM, PYTHON_DEBS, TRIXIE, Release, copy_root
from tests.testbed.client import Attempt, Client
from tests.testbed.cluster import Cluster
from tests.testbed.failover import make_kube_proxy_sync
from tests.testbed.history import Event, History
from tests.testbed.mariadb import RATINGS_USER
from tests.testbed.node import Node
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

EXPOSURE_LIMIT = 2.0

pytestmark = pytest.mark.vm  # cluster: added by tests/conftest.py wherever the fixture is used


@pytest.fixture
def lifecycle(request: pytest.FixtureRequest, cluster: Cluster, namespace: str, *, debs: Debs, tmp_path: Path,
              capsys: pytest.CaptureFixture[str]) -> Iterator[Lifecycle]:
    release: Release = getattr(request, "param", BOOKWORM)
    vm = VM(f"deb-{uuid.uuid4().hex[:4]}", tmp_path, cluster)
    container = Container(copy_root(tmp_path / "root", release), vm, tmp_path / "console.log")
    figures: list[str] = []
    try:
        yield Lifecycle(cluster, namespace, container, debs=debs, release=release,
                        report=lambda line: figures.append(f"{release.suite}: {line}"))
    finally:
        container.destroy()
        vm.destroy()
        with capsys.disabled():  # the figures for the closing note, shown even when output is captured
            print("\n" + "\n".join(f"[e2e] {line}" for line in figures))


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("lifecycle", [BOOKWORM, TRIXIE], ids=["debian12", "debian13"], indirect=True)
def test_deb_lifecycle_on_booted_debian(lifecycle: Lifecycle) -> None:
    if lifecycle.release == BOOKWORM:  # what VMs run today: the previous release, upgraded to this one
        lifecycle.install(lifecycle.debs.previous)
        lifecycle.boot_registers()
        lifecycle.upgrade_from_previous_release()
    else:
        lifecycle.previous_release_refused()
        lifecycle.install(lifecycle.debs.amd64)
        lifecycle.boot_registers()
    lifecycle.runs_on_the_distributions_python()
    lifecycle.runs_sandboxed()
    lifecycle.feeds_the_watchdog()
    lifecycle.stop_and_start()
    lifecycle.poweroff_deregisters()
    lifecycle.upgrade_keeps_config()
    lifecycle.follows_python3_changes()
    lifecycle.broken_config_fails_once()
    lifecycle.purge_leaves_nothing()


@pytest.mark.timeout(1500)
def test_restarts_keep_the_endpoint_and_stops_drain_on_booted_debian12(
    lifecycle: Lifecycle, mariadb_template: Path, tmp_path: Path
) -> None:
    """A client connects through kube-proxy every 20 ms while the agent is restarted every way systemd does it,
    then stopped for good with a second VM serving, removed by apt, and powered off (issue 17)."""
    lifecycle.install(lifecycle.debs.amd64)
    lifecycle.container.boot()
    lifecycle.wait_registered(timeout=60)
    c, cluster, namespace = lifecycle.container, lifecycle.cluster, lifecycle.namespace
    name = f"mysqldb.{namespace}.svc.cluster.local"
    with VM(f"b-{uuid.uuid4().hex[:4]}", tmp_path, cluster) as other, \
            Node(tmp_path, cluster, search_namespace=namespace) as node:
        wait_until(lambda: node.resolve(name), 30, name)
        with Client(node.netns, name) as client:
            restarts = Restarts(lifecycle, client)
            restarts.run()
            # The planned stops need a second VM to fail over to.
            other.start_mariadb(mariadb_template)
            other.start_agent(other.write_config(namespace))
            assert other.mariadb is not None
            poke = make_kube_proxy_sync(cluster, namespace)
            PlannedStops(lifecycle, client, str(other.mariadb.datadir), poke).run()
    seen = subprocess.run(["journalctl", "-D", str(lifecycle.root / "var/log/journal"), "--no-pager", "-o", "cat",
                           "-u", UNIT, "--grep", "^stop kind: "], capture_output=True, text=True, check=False).stdout
    counts: dict[str, int] = {}
    for line in seen.splitlines():
        counts[line] = counts.get(line, 0) + 1
    lifecycle.report("what the unit's ExecStop saw: " + " | ".join(f"{n} x {line}" for line, n in counts.items()))
    assert c.nspawn is None


CONTAINER_DATADIR = "/var/lib/mysql/"
START_SPACING = 2.5  # seconds between two starts of the unit: 4 in any 10 s


def _lease_holder_pid(cluster: Cluster, namespace: str, hostname: str) -> str:
    lease = cluster.get("lease", f"vmesh-{hostname}", namespace) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "").rpartition("/")[2]


def _longest_gap(attempts: list[Attempt]) -> float:
    """The longest time between the starts of two answered connections in a row."""
    answered = [a.at for a in attempts if a.ok]
    return max((b - a for a, b in itertools.pairwise(answered)), default=0.0)


class Restarts:
    """Every way systemd restarts the agent, MariaDB untouched: nothing may be published not ready or
    terminating, no connection may fail, the slice and the Lease keep their uids."""

    def __init__(self, lifecycle: Lifecycle, client: Client) -> None:
        self.l = lifecycle
        self.c = lifecycle.container
        self.client = client
        self.last_start = 0.0

    def ours(self, obj: dict[str, object]) -> bool:
        meta = obj.get("metadata") or {}
        assert isinstance(meta, dict)
        hostname = self.l.release.hostname
        return (meta.get("labels") or {}).get("vmesh.dev/vm") == hostname or meta.get("name") == f"vmesh-{hostname}"

    def pace(self) -> None:
        """systemd refuses a unit's sixth start within 10 s (DefaultStartLimitBurst=5 per
        DefaultStartLimitIntervalSec=10s): an admin's restarts are never that close, so neither are these."""
        time.sleep(max(0.0, self.last_start + START_SPACING - time.monotonic()))
        self.last_start = time.monotonic()

    def adopted(self) -> None:
        """The process systemd now runs holds the Lease (it adopted it: same boot, the old process gone)."""
        pid = self.c.unit("MainPID")
        wait_until(lambda: pid != "0" and _lease_holder_pid(self.l.cluster, self.l.namespace,
                                                            self.l.release.hostname) == pid, 30,
                   f"the Lease held by the new process {pid}")

    def run(self) -> None:
        cluster, namespace, c = self.l.cluster, self.l.namespace, self.c
        with History(cluster, "endpointslices", namespace) as slices, History(cluster, "leases", namespace) as leases:
            first_slice = slices.wait_for(self.ours, 10, "the slice in the watch")
            first_lease = leases.wait_for(self.ours, 10, "the Lease in the watch")
            began = time.monotonic()
            ways = [("systemctl", "restart", UNIT), ("systemctl", "try-restart", UNIT),
                    ("deb-systemd-invoke", "restart", UNIT)]
            for i in range(30):
                before = c.unit("MainPID")
                self.pace()
                c.run(*ways[i % 3])  # returns once the new process sent READY=1 (after its first sync)
                assert c.unit("ActiveState") == "active" and c.unit("MainPID") not in (before, "0")
                self.adopted()
            restarted = time.monotonic()
            crashes = 3
            for _ in range(crashes):
                before, count = c.unit("MainPID"), int(c.unit("NRestarts"))
                self.pace()
                c.run("systemctl", "kill", "--signal=SIGKILL", "--kill-whom=main", UNIT)

                def restarted_after_kill(before: str = before, count: int = count) -> bool:
                    return (int(c.unit("NRestarts")) > count and c.unit("ActiveState") == "active"
                            and c.unit("MainPID") not in (before, "0"))

                wait_until(restarted_after_kill, 30, "Restart=on-failure after SIGKILL")
                self.adopted()
            killed = time.monotonic()
            before = c.unit("MainPID")
            self.pace()
            c.run("sh", "-c", f"cd /root/debs && apt-get install -y ./{self.l.debs.newer.name}")
            assert c.run("dpkg-query", "-W", "-f=${Version}", "vmesh-agent").stdout.endswith("-2")
            assert c.unit("MainPID") not in (before, "0"), "the upgrade did not restart the agent"
            self.adopted()
            upgraded = time.monotonic()
            self.client.wait_for(50, upgraded)  # a second of connections after the last restart
            attempts = self.client.since(began)
            slice_events = slices.events(self.ours)
            lease_events = leases.events(self.ours)

        failed = [a for a in attempts if not a.ok]
        phases = {"30 restarts": (began, restarted), f"{crashes} SIGKILLs": (restarted, killed),
                  "upgrade to revision 2": (killed, upgraded)}
        for phase, (start, end) in phases.items():
            during = [a for a in attempts if start <= a.at < end]
            self.l.report(f"{phase} (client every 20 ms through kube-proxy): {sum(not a.ok for a in during)} failed of "
                          f"{len(during)}, longest gap between answered connections {_longest_gap(during):.3f} s, "
                          f"{end - start:.1f} s")
        self.l.report(f"slice versions seen across all restarts: {len(slice_events)}; "
                      f"Lease versions: {len(lease_events)}")
        assert not failed, f"{len(failed)} connections failed across the restarts: {failed[:5]}"
        assert all(e.type != "DELETED" for e in slice_events + lease_events)
        assert {e.uid for e in slice_events} == {first_slice.uid}, "the slice was replaced"
        assert {e.uid for e in lease_events} == {first_lease.uid}, "the Lease was replaced"
        bad = [e.obj.get("endpoints") for e in slice_events if not _slice_ready(e)]
        assert not bad, f"the endpoint was published not ready or terminating: {bad[:3]}"


def _slice_ready(event: Event) -> bool:
    conditions = [e["conditions"] for e in event.obj.get("endpoints") or []]
    return bool(conditions) and all(c.get("ready") and not c.get("terminating") for c in conditions)


class PlannedStops:
    """A stop for good while another VM serves: drained first, so no connection fails (bench/failover's planned
    stop): systemctl stop, apt remove, and the machine's power-off, each right after a change that made
    kube-proxy sync (its next sync then waits out its 1 s minimum period: the worst moment)."""

    def __init__(self, lifecycle: Lifecycle, client: Client, other_datadir: str, poke: Callable[[], object]) -> None:
        self.l = lifecycle
        self.c = lifecycle.container
        self.client = client
        self.other = other_datadir
        self.poke = poke

    def served_by_both(self) -> None:
        since = time.monotonic()
        wanted = {CONTAINER_DATADIR.rstrip("/"), self.other.rstrip("/")}
        wait_until(lambda: wanted <= {a.server.rstrip("/") for a in self.client.since(since) if a.ok}, 30,
                   "connections answered by both VMs")

    def stop(self, what: str, action: Callable[[], object], then_database: bool = True) -> None:
        self.served_by_both()
        self.poke()
        began = time.monotonic()
        action()
        if then_database:  # the order systemd uses at shutdown: the database right after the agent
            self.c.run("systemctl", "stop", "mariadb")
        stopped = time.monotonic()
        assert self.l.lease() is None, f"{what} left the Lease"
        assert self.l.address not in self.l.endpoints(), f"{what} left the endpoint behind"
        self.client.wait_for(1, stopped + 2)
        attempts = self.client.since(began)
        failed = [a for a in attempts if not a.ok]
        after = [a for a in attempts if a.at >= stopped]
        elsewhere = sum(a.answered_by(self.other) for a in after)
        self.l.report(f"{what} with a second VM serving: {len(failed)} failed of {len(attempts)}, longest gap "
                      f"{_longest_gap(attempts):.3f} s; after the stop {elsewhere} of {len(after)} answered by the "
                      "other VM")
        assert not failed, f"{what}: {len(failed)} connections failed: {failed[:5]}"
        assert all(a.answered_by(self.other) for a in after)

    def run(self) -> None:
        c = self.c
        self.stop("systemctl stop vmesh-agent", lambda: c.run("systemctl", "stop", UNIT))
        c.run("systemctl", "start", "mariadb")
        c.run("systemctl", "start", UNIT)
        self.l.wait_registered(timeout=30)
        self.stop("apt-get remove vmesh-agent", lambda: c.run("apt-get", "remove", "-y", "vmesh-agent"))
        c.run("systemctl", "start", "mariadb")
        c.run("sh", "-c", f"cd /root/debs && apt-get install -y ./{self.l.debs.newer.name}")
        self.l.wait_registered(timeout=30)
        # Reboot and power-off: systemd itself stops the agent (kind shutdown), then MariaDB (the unit is ordered
        # after it). systemd-nspawn ends at the reboot; the test boots the VM again.
        self.stop("systemctl reboot of the VM", lambda: c.poweroff(verb="reboot"), then_database=False)
        c.boot()
        self.l.wait_registered(timeout=60)
        self.stop("systemctl poweroff of the VM", c.poweroff, then_database=False)
        assert '"event": "deregistered"' in journal(self.l.root, boot="0")


class Lifecycle:
    """The steps of the package's life on one VM, in order; each asserts what the issue promises."""

    def __init__(self, cluster: Cluster, namespace: str, container: Container, *, debs: Debs, release: Release,
                 report: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.container = container
        self.root = container.root
        self.address = container.vm.address
        self.debs = debs
        self.release = release
        self.report = report
        self.config = ""

    def lease(self) -> dict[str, Any] | None:
        return self.cluster.get("lease", f"vmesh-{self.release.hostname}", self.namespace)

    def _inbox(self) -> None:
        inbox = self.root / "root" / "debs"  # not /tmp: the booted container mounts a fresh tmpfs there
        if not inbox.exists():
            inbox.mkdir()
            for built in (self.debs.previous, self.debs.amd64, self.debs.newer):
                (inbox / built.name).write_bytes(built.read_bytes())

    def previous_release_refused(self) -> None:
        """The bug this deb fixes: the previous release needs python3.11, which this release does not have."""
        self._inbox()
        refused = chroot(self.root, f"cd /root/debs && apt-get install -y ./{self.debs.previous.name}")
        assert refused.returncode != 0
        assert "Depends: python3.11 but it is not installable" in refused.stdout + refused.stderr, refused.stdout

    def install(self, deb: Path) -> None:
        """apt-get install ./deb into the never-booted root, with no network at all; then the admin's edits."""
        root = self.root
        (root / "var" / "log" / "journal").mkdir(parents=True, exist_ok=True)  # the journal survives power-off
        size = deb.stat().st_size
        self.report(f"{deb.name}: {size / 2**20:.1f} MiB ({size} bytes), installed size "
                    f"{_control_field(deb, 'Installed-Size')} KiB")
        self._inbox()
        started = time.monotonic()
        installed = chroot(root, f"cd /root/debs && apt-get install -y ./{deb.name}")
        self.report(f"install time (apt-get install ./deb, chroot, no network): {time.monotonic() - started:.1f} s")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert (root / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink(), "unit not enabled"
        assert "vmesh-agent:" in (root / "etc" / "group").read_text()
        self.config = point_config_at_cluster(root, self.cluster, self.namespace)

    def boot_registers(self) -> None:
        """No manual start: booting alone registers mysqldb at the VM's address, and the socket API answers."""
        booted = time.monotonic()
        self.container.boot()
        self.wait_registered(timeout=60)
        self.report(f"boot to registered: {time.monotonic() - booted:.1f} s (systemd-nspawn start to EndpointSlice)")
        c = self.container
        assert c.wait_booted() in ("running", "degraded")
        assert c.unit("ActiveState") == "active"
        assert c.unit("NRestarts") == "0"
        # Debian's defaults (no skip-name-resolve: the host cache counts), and the VM's address has a name.
        settings = c.run("mariadb", "-N", "-e", "SELECT @@skip_name_resolve, @@max_connect_errors").stdout.split()
        assert settings == ["0", "100"], settings
        assert c.run("getent", "hosts", self.address).stdout.split()[1:] == [self.release.hostname]
        assert c.unit("Type") == "notify"  # and active: the agent sent READY=1
        assert c.unit("StatusText"), "no STATUS= from the agent"
        assert c.unit("WatchdogUSec") not in ("", "0", "infinity")
        status = c.run("vmesh-agent", "status")  # over /run/vmesh-agent/agent.sock
        assert "passing" in status.stdout, status.stdout
        assert json.loads(c.run("vmesh-agent", "status", "--json").stdout)
        discovered = json.loads(c.run("vmesh-agent", "discover", "--json").stdout)
        assert discovered["addresses"]["advertised"] == self.address
        assert any(item.get("service") == "mysqldb" for item in discovered["listeners"]), discovered
        self.read_ratings_through_registration()

    def upgrade_from_previous_release(self) -> None:
        """apt-get install of this tree's deb over the previous release's (a venv on python3.11) in the running VM:
        the agent restarts on the new layout and keeps the VM's registrations (the Lease is the same object)."""
        c = self.container
        lease_uid = (self.lease() or {})["metadata"]["uid"]
        old_pid = c.unit("MainPID")
        started = time.monotonic()
        c.run("sh", "-c", f"cd /root/debs && apt-get install -y ./{self.debs.amd64.name}")
        self.report(f"upgrade from the previous release in the booted VM: {time.monotonic() - started:.1f} s")
        assert c.run("dpkg-query", "-W", "-f=${Version}", "vmesh-agent").stdout.endswith("-1")
        assert c.unit("ActiveState") == "active" and c.unit("MainPID") not in (old_pid, "0")
        self.wait_registered(timeout=30)
        assert (self.lease() or {})["metadata"]["uid"] == lease_uid, "the upgrade replaced the Lease"
        for gone in ("/usr/lib/vmesh-agent/lib", "/usr/lib/vmesh-agent/bin", "/usr/lib/vmesh-agent/pyvenv.cfg"):
            assert c.run("test", "-e", gone, check=False).returncode != 0, f"{gone} is left from the previous release"
        assert (self.root / "etc/vmesh-agent/config.toml").read_text() == self.config

    def runs_on_the_distributions_python(self) -> None:
        """The unit runs /usr/bin/python3 of this release, and every compiled module the deb carries loads for it."""
        c, python = self.container, self.release.python
        exe = c.run("readlink", f"/proc/{c.unit('MainPID')}/exe").stdout.strip()
        assert exe == f"/usr/bin/python{python}", exe
        status = json.loads(c.run("vmesh-agent", "status", "--json").stdout)["python"]
        shipped = json.loads((self.root / "usr/lib/vmesh-agent/bundle.json").read_text())["compiled"]
        assert status["version"].startswith(f"{python}."), status
        assert status["compiled_failed"] == {} and sorted(status["compiled_loaded"]) == sorted(shipped), status
        assert len(shipped) == 8 and status["problem"] is None
        tag = f"cpython-{python.replace('.', '')}"
        pyc = c.run("sh", "-c", "find /usr/lib/vmesh-agent -name '*.pyc'").stdout.split()
        assert len(pyc) > 500 and all(f".{tag}.pyc" in name for name in pyc), pyc[:5]
        self.report(f"python{python}: {len(status['compiled_loaded'])} compiled modules loaded, {len(pyc)} .pyc")

    def follows_python3_changes(self) -> None:
        """A distribution upgrade changes /usr/bin/python3 (bookworm to trixie: 3.11 to 3.13) by installing
        python3-minimal: the deb's trigger compiles for the new interpreter, drops the old one's bytecode, and
        restarts an agent still on the old interpreter (a restart: registrations kept); when python3 did not
        change, the agent is left alone. The old interpreter is played by a copy of this release's own."""
        c, python = self.container, self.release.python
        cache = "/usr/lib/vmesh-agent/site-packages/agent/cli/__pycache__"  # agent/cli/main.py
        c.run("sh", "-c", f"cp /usr/bin/python{python} /usr/bin/python-before && ln -sf python-before /usr/bin/python3")
        c.run("systemctl", "restart", UNIT)
        before = c.unit("MainPID")
        assert c.run("readlink", f"/proc/{before}/exe").stdout.strip() == "/usr/bin/python-before"
        lease_uid = (self.lease() or {})["metadata"]["uid"]
        tag = f"cpython-{python.replace('.', '')}"
        c.run("sh", "-c", f"touch {cache}/main.cpython-310.pyc && rm {cache}/main.{tag}.pyc")
        started = time.monotonic()
        c.run("sh", "-c", f"dpkg -i {PYTHON_DEBS}/python3-minimal_*.deb")  # what the distribution upgrade does
        self.report(f"python3-minimal installed, trigger run: {time.monotonic() - started:.1f} s")
        assert c.run("readlink", "/usr/bin/python3").stdout.strip() == f"python{python}"
        after = c.unit("MainPID")
        assert after not in (before, "0"), "the agent was not restarted on the new python3"
        assert c.run("readlink", f"/proc/{after}/exe").stdout.strip() == f"/usr/bin/python{python}"
        assert c.run("test", "-e", f"{cache}/main.cpython-310.pyc", check=False).returncode != 0, "stale bytecode kept"
        assert c.run("test", "-e", f"{cache}/main.{tag}.pyc", check=False).returncode == 0, "not compiled again"
        self.wait_registered(timeout=30)
        assert (self.lease() or {})["metadata"]["uid"] == lease_uid, "the restart replaced the Lease"
        c.run("sh", "-c", f"dpkg -i {PYTHON_DEBS}/python3-minimal_*.deb && rm /usr/bin/python-before")
        assert c.unit("MainPID") == after, "restarted though python3 did not change"

    def runs_sandboxed(self) -> None:
        out = self.container.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
        match = re.search(rf"Overall exposure level for {re.escape(UNIT)}: ([0-9.]+)", out)
        assert match, out[-2000:]
        exposed = [line.split()[1] for line in out.splitlines() if line.startswith("✗")]
        self.report(f"systemd-analyze security {UNIT}: {match.group(1)} (limit {EXPOSURE_LIMIT}); "
                    f"still exposed: {', '.join(exposed)}")
        assert float(match.group(1)) <= EXPOSURE_LIMIT
        verify = self.container.run("systemd-analyze", "verify", f"/lib/systemd/system/{UNIT}", check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    def feeds_the_watchdog(self) -> None:
        """WATCHDOG=1 arrives while the agent runs (every WatchdogSec/2): systemd's record of it moves on."""
        c = self.container
        first = int(c.unit("WatchdogTimestampMonotonic"))
        half = _seconds(c.unit("WatchdogUSec")) / 2
        wait_until(lambda: int(c.unit("WatchdogTimestampMonotonic")) > first, half + 5, "a WATCHDOG=1", interval=0.5)
        assert c.unit("ActiveState") == "active"

    def stop_and_start(self) -> None:
        started = time.monotonic()
        self.container.run("systemctl", "stop", UNIT)
        assert self.lease() is None, "systemctl stop left the Lease"
        assert self.endpoints() == [], "systemctl stop left the endpoint behind"
        self.report(f"systemctl stop, endpoint removed: {time.monotonic() - started:.1f} s")
        assert self.container.unit("ExecMainStatus") == "0"
        self.container.run("systemctl", "start", UNIT)  # returns after READY=1, i.e. after the first sync
        assert self.address in self.endpoints(), "not registered again after systemctl start"

    def poweroff_deregisters(self) -> None:
        started = time.monotonic()
        self.container.poweroff()
        self.report(f"power-off: container gone after {time.monotonic() - started:.1f} s")
        assert self.lease() is None, "the Lease outlived the VM's shutdown:\n" + journal(self.root)
        assert self.endpoints() == [], "the endpoint outlived the VM's shutdown:\n" + journal(self.root)
        assert '"event": "deregistered"' in journal(self.root, boot="0")

    def upgrade_keeps_config(self) -> None:
        """A newer build installed by apt inside the running VM (no internet there): restart, same config."""
        c = self.container
        booted = time.monotonic()
        c.boot()
        self.wait_registered(timeout=60)
        self.report(f"second boot to registered: {time.monotonic() - booted:.1f} s")
        old_pid = c.unit("MainPID")
        started = time.monotonic()
        c.run("sh", "-c", f"cd /root/debs && apt-get install -y ./{self.debs.newer.name}")
        self.report(f"upgrade (apt-get install ./newer.deb in the booted VM): {time.monotonic() - started:.1f} s")
        version = c.run("dpkg-query", "-W", "-f=${Version}", "vmesh-agent").stdout
        assert version.endswith("-2"), version
        assert (self.root / "etc/vmesh-agent/config.toml").read_text() == self.config, "the upgrade changed the config"
        assert c.unit("ActiveState") == "active"
        assert c.unit("MainPID") not in (old_pid, "0"), "the upgrade did not restart the agent"
        self.wait_registered(timeout=30)

    def broken_config_fails_once(self) -> None:
        c = self.container
        (self.root / "etc/vmesh-agent/config.toml").write_text(self.config + '\n[heartbeat]\ninterval = "soon"\n')
        check = c.run("vmesh-agent", "check-config", "/etc/vmesh-agent/config.toml", check=False)
        assert check.returncode == 78, check
        assert c.run("systemctl", "restart", UNIT, check=False).returncode != 0
        wait_until(lambda: c.unit("ActiveState") == "failed", 30, "the unit to fail")
        assert c.unit("ExecMainStatus") == "78"
        time.sleep(3 * _seconds(c.unit("RestartUSec")) + 1)  # a restart loop would have shown by now
        assert c.unit("ActiveState") == "failed"
        assert c.unit("NRestarts") == "0", "restarted despite RestartPreventExitStatus=78"
        failures = journal(self.root, boot="0").count("Main process exited, code=exited, status=78")
        assert failures == 1, f"exit 78 logged {failures} times"

    def purge_leaves_nothing(self) -> None:
        """Purge with the agent running: it is stopped (and deregisters); unit, config and state are gone."""
        c = self.container
        (self.root / "etc/vmesh-agent/config.toml").write_text(self.config)
        c.run("systemctl", "reset-failed", UNIT)
        c.run("systemctl", "start", UNIT)
        self.wait_registered(timeout=30)
        c.run("apt-get", "purge", "-y", "vmesh-agent")
        assert self.lease() is None, "purge left the Lease"
        assert self.endpoints() == [], "purge left the endpoint behind"
        for path in ("/lib/systemd/system/vmesh-agent.service", "/etc/vmesh-agent", "/var/lib/vmesh-agent",
                     "/etc/systemd/system/multi-user.target.wants/vmesh-agent.service", "/usr/bin/vmesh-agent",
                     "/usr/lib/vmesh-agent", "/run/vmesh-agent"):
            assert c.run("test", "-e", path, check=False).returncode != 0, f"{path} is left after purge"
        assert c.run("systemctl", "show", "-P", "LoadState", UNIT).stdout.strip() == "not-found"
        running = c.run("pgrep", "-u", "vmesh-agent", check=False)
        assert running.returncode == 1, f"still running as vmesh-agent: {running.stdout}"
        c.poweroff()

    # -- observations --

    def endpoints(self) -> list[str]:
        return endpoints(self.cluster, self.namespace)

    def wait_registered(self, timeout: float) -> None:
        def registered() -> bool:
            nspawn = self.container.nspawn
            if nspawn is not None and nspawn.poll() is not None:
                raise AssertionError(f"the container exited: {self.container.console()[-3000:]}")
            return self.address in self.endpoints()

        started = time.monotonic()
        try:
            wait_until(registered, timeout, f"mysqldb registered at {self.address}", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{journal(self.root)}") from None
        if time.monotonic() - started > 10:  # normally 2-3 s: show why (an apiserver outage from another test?)
            self.report("slow registration; the agent's journal:\n" + journal(self.root, boot="0")[-5000:])

    def read_ratings_through_registration(self) -> None:
        """What a pod would do: connect to the registered endpoint and read Istio's ratings."""
        [endpoint_slice] = self.cluster.list("endpointslices", self.namespace,
                                             selector="kubernetes.io/service-name=mysqldb")
        address = endpoint_slice["endpoints"][0]["addresses"][0]
        port = endpoint_slice["ports"][0]["port"]
        conn = pymysql.connect(host=address, port=port, user=RATINGS_USER[0], password=RATINGS_USER[1],
                               database="test", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT ReviewID, Rating FROM ratings ORDER BY ReviewID")
                assert cur.fetchall() == ((1, 5), (2, 4))
        finally:
            conn.close()


# --- helpers -------------------------------------------------------------------------------------------------


def _control_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def _seconds(usec: str) -> float:
    """systemctl show's time span ("2s", "100ms", "1min 30s") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(us|ms|min|s|h)", usec))
