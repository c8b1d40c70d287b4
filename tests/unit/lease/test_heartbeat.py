"""The heartbeat's rules on a fake clock: who may take the VM's Lease, and when; renewals, takeovers, release.

The in-memory Lease API only orders the steps; the behaviour with two real agents is in
tests/integration/test_identity.py.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from agent.cluster.errors import Unavailable
from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_lease
from agent.daemon.sdnotify import Notifier
from agent.lease.heartbeat import Heartbeat, LeaseHeld
from agent.lease.identity import HolderIdentity, parse_id, read_identity
from agent.logs import get_logger
from tests.unit.fakes import FakeApi, FakeClock

ME = HolderIdentity("vm-a", "3d1219c7c4c5", "2d063c5bd7e1", 100)
CLONE = HolderIdentity("vm-a", "3d1219c7c4c5", "9f00aa11bb22", 200)  # same disk image, another boot
DURATION = 15.0
Body = dict[str, Any]


def heartbeat(api: FakeApi, clock: FakeClock, identity: HolderIdentity = ME,
              alive: frozenset[int] = frozenset({100, 200}), interval: float = 5) -> tuple[Heartbeat, list[str]]:
    news: list[str] = []
    beat = Heartbeat(cast(KubeClient, api), "vm", "vm-a", interval=interval, lease_duration=DURATION, log=get_logger(),
                     wall_clock=lambda: 1_700_000_000.0, on_new_lease=lambda: news.append("new"),
                     identity=identity, clock=clock, alive=lambda pid: pid in alive)
    return beat, news


def held_by(api: FakeApi, holder: HolderIdentity | str) -> None:
    body = build_lease("vm-a", "vm", int(DURATION), datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
                       holder=str(holder))
    body["spec"]["holderIdentity"] = str(holder)  # "" included: let go
    api.put(body)


# -- identity ---------------------------------------------------------------------------------------------

def test_identity_is_vm_machine_boot_and_process_and_reads_from_a_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("3D1219C7C4C5404AAA1F6D2A48ADFDA4\n")
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("2d063c5b-d7e1-446d-955c-a4721298067b\n")
    identity = read_identity("vm-a", root=str(tmp_path), pid=100)
    assert identity == ME
    assert str(identity) == "vm-a/3d1219c7c4c5/2d063c5bd7e1/100"
    assert HolderIdentity.parse(str(identity)) == identity
    assert HolderIdentity.parse("vm-a") is None  # what releases before this one wrote
    assert read_identity("vm-a", root=str(tmp_path / "nowhere"), pid=1).machine == "unknown"
    assert parse_id("garbage-!") == "abae"


def test_only_a_gone_process_of_this_very_boot_is_an_earlier_run() -> None:
    gone = HolderIdentity("vm-a", ME.machine, ME.boot, 99)
    assert ME.earlier_run(str(gone), alive=lambda pid: False)
    assert not ME.earlier_run(str(gone), alive=lambda pid: True)  # a second agent on this host, still running
    assert not ME.earlier_run(str(CLONE), alive=lambda pid: False)  # another boot: a clone, or a reboot
    assert not ME.earlier_run(str(ME), alive=lambda pid: False)
    assert not ME.earlier_run("vm-a", alive=lambda pid: False)


# -- taking the Lease ---------------------------------------------------------------------------------------

async def test_a_new_lease_records_the_holder_and_renewals_keep_it() -> None:
    api, clock = FakeApi(), FakeClock()
    beat, _ = heartbeat(api, clock)
    lease = await beat.ensure()
    assert lease["spec"]["holderIdentity"] == str(ME)
    clock.advance(5)
    await beat.renew()
    assert api.objects["vmesh-vm-a"]["spec"]["holderIdentity"] == str(ME)
    assert beat.last_renewal == clock.now and beat.held and beat.conflict == ""


async def test_a_live_clone_is_refused_while_it_renews_and_taken_over_once_seen_silent_for_a_duration() -> None:
    api, clock = FakeApi(), FakeClock()
    held_by(api, CLONE)
    beat, news = heartbeat(api, clock)
    with pytest.raises(LeaseHeld):
        await beat.ensure()
    assert beat.conflict and not beat.conflict_confirmed and not beat.held
    for _ in range(3):  # within one lease duration the clone renews: a live holder, a conflict
        clock.advance(5)
        api.renew("vmesh-vm-a", f"t{clock.now}")
        with pytest.raises(LeaseHeld):
            await beat.renew()
    assert beat.conflict_confirmed
    assert str(CLONE) in beat.conflict and "vm_name" in beat.conflict
    assert api.objects["vmesh-vm-a"]["spec"]["holderIdentity"] == str(CLONE), "nothing written while refused"
    uid = api.objects["vmesh-vm-a"]["metadata"]["uid"]

    clock.advance(DURATION)  # the clone stopped renewing; exactly a duration of silence is not enough
    with pytest.raises(LeaseHeld):
        await beat.renew()
    clock.advance(0.1)
    await beat.renew()
    taken = api.objects["vmesh-vm-a"]
    assert taken["spec"]["holderIdentity"] == str(ME)
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["metadata"]["uid"] == uid, "taken over in place: what it owns stays owned"
    assert beat.held and beat.conflict == "" and news == ["new"]


async def test_judged_by_observed_changes_never_by_renew_time() -> None:
    """A holder whose renewTime is years old but which keeps writing is alive (its clock may be wrong)."""
    api, clock = FakeApi(), FakeClock()
    held_by(api, CLONE)
    beat, _ = heartbeat(api, clock)
    for _ in range(10):
        with pytest.raises(LeaseHeld):
            await beat.renew()
        clock.advance(10)
        api.renew("vmesh-vm-a", "2001-01-01T00:00:00.000000Z")
    assert not beat.held


async def test_an_earlier_run_on_this_boot_or_a_let_go_lease_is_adopted_at_once() -> None:
    api, clock = FakeApi(), FakeClock()
    held_by(api, HolderIdentity("vm-a", ME.machine, ME.boot, 42))  # crashed; systemd restarted us
    beat, _ = heartbeat(api, clock)
    await beat.ensure()
    assert api.objects["vmesh-vm-a"]["spec"]["holderIdentity"] == str(ME)

    api2 = FakeApi()
    held_by(api2, "")
    beat2, _ = heartbeat(api2, FakeClock())
    await beat2.ensure()
    assert api2.objects["vmesh-vm-a"]["spec"]["holderIdentity"] == str(ME)


async def test_a_rebooted_vm_re_adopts_its_lease_after_seeing_it_unrenewed() -> None:
    """After a reboot the old boot's identity looks like a clone's: adopted once silent for a duration."""
    api, clock = FakeApi(), FakeClock()
    held_by(api, HolderIdentity("vm-a", ME.machine, "0123456789ab", 100))
    uid = api.objects["vmesh-vm-a"]["metadata"]["uid"]
    beat, _ = heartbeat(api, clock)
    with pytest.raises(LeaseHeld):
        await beat.ensure()
    clock.advance(DURATION + 0.1)
    await beat.ensure()
    assert api.objects["vmesh-vm-a"]["metadata"]["uid"] == uid


async def test_a_lease_taken_over_while_held_stops_registering_and_is_not_deleted_on_release() -> None:
    api, clock = FakeApi(), FakeClock()
    beat, _ = heartbeat(api, clock)
    await beat.ensure()
    lease = api.objects["vmesh-vm-a"]
    lease["spec"]["holderIdentity"] = str(CLONE)  # this agent was frozen for longer than a duration
    api.put(lease)
    with pytest.raises(LeaseHeld):
        await beat.renew()
    assert not beat.held
    with pytest.raises(LeaseHeld):
        await beat.ensure()
    await beat.release()
    assert api.objects["vmesh-vm-a"]["spec"]["holderIdentity"] == str(CLONE)


async def test_release_deletes_only_the_version_it_holds() -> None:
    api, clock = FakeApi(), FakeClock()
    beat, _ = heartbeat(api, clock)
    await beat.ensure()
    lease = api.objects["vmesh-vm-a"]
    lease["metadata"]["labels"]["someone"] = "edited"  # still ours: deleted after a re-read
    api.put(lease)
    await beat.release()
    assert "vmesh-vm-a" not in api.objects


class SignallingLeases(FakeApi):
    """Tells a test each time a write or read came back (failed or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = asyncio.Event()

    async def replace(self, *args: Any, **kwargs: Any) -> Body:
        try:
            return await super().replace(*args, **kwargs)
        finally:
            self.answered.set()

    async def get(self, *args: Any, **kwargs: Any) -> Body:
        try:
            return await super().get(*args, **kwargs)
        finally:
            self.answered.set()


async def answers(api: SignallingLeases, n: int) -> None:
    for _ in range(n):
        api.answered.clear()
        await api.answered.wait()


async def test_the_loop_watches_a_held_lease_every_interval_without_counting_failures() -> None:
    api, clock = SignallingLeases(), FakeClock()
    held_by(api, CLONE)
    beat, news = heartbeat(api, clock, interval=0.01)
    with pytest.raises(LeaseHeld):
        await beat.ensure()
    task = asyncio.create_task(beat.run())
    try:
        async with asyncio.timeout(2):
            await answers(api, 3)  # looked three times: still held, not a failure of this agent's heartbeat
            assert not beat.held and beat.consecutive_failures == 0
            clock.advance(DURATION + 1)  # silent from now on: the loop takes it at its next look
            await answers(api, 2)  # the look, then the takeover
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert beat.held and beat.consecutive_failures == 0 and news == ["new"]


async def test_renewal_failures_are_counted_and_recovered() -> None:
    api, clock = SignallingLeases(), FakeClock()
    beat, _ = heartbeat(api, clock, interval=0.01)
    await beat.ensure()
    api.fail_with = Unavailable("cannot reach the apiserver")
    task = asyncio.create_task(beat.run())
    try:
        async with asyncio.timeout(2):
            await answers(api, 2)
            assert beat.consecutive_failures == 2
            api.fail_with = None
            await answers(api, 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert beat.consecutive_failures == 0 and beat.failures == 2 and beat.renewals == 1


# -- sd_notify ----------------------------------------------------------------------------------------------

def test_no_watchdog_ping_is_ever_sent_after_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
        notifier.notify("WATCHDOG=1")
        notifier.notify("STOPPING=1", "STATUS=deregistering")
        notifier.notify("WATCHDOG=1")
        notifier.notify("WATCHDOG=1", "STATUS=draining")
        received = []
        while True:
            try:
                received.append(systemd.recv(4096).decode())
            except BlockingIOError:
                break
    assert received == ["WATCHDOG=1", "STOPPING=1\nSTATUS=deregistering", "STATUS=draining"]


def test_a_notify_socket_that_is_not_read_never_blocks_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))  # and never read: its queue fills after a few datagrams
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        for _ in range(1000):
            notifier.notify("STATUS=still here")
