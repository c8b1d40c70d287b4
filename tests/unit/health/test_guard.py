"""The guarded check's schedule (when the server is asked) on a fake clock, and what the socket table says."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from agent.discovery.listeners import Listener
from agent.health.checks import CheckResult
from agent.health.guard import GuardedCheck, Sample, Schedule, sample
from agent.health.monitor import HealthMonitor, Status
from tests.unit.fakes import FakeClock

VM = "198.18.1.5"
PASS = CheckResult(True, "MariaDB 10.11.19 answered a login probe (1698)", 0.001)
TIMEOUT = CheckResult(False, "timed out after 1s", 1.0)
TOO_MANY = CheckResult(False, "1040: Too many connections", 0.001)


def status_of(monitor: HealthMonitor) -> Status:
    """The status as it is now (mypy would keep `monitor.status` narrowed by an earlier assert, across checks)."""
    return monitor.status


def test_sample_covers_the_advertised_address_by_wildcard_or_exactly() -> None:
    table = [Listener("127.0.0.1", 3306, 1, 0), Listener("0.0.0.0", 3306, 2, 3), Listener("0.0.0.0", 22, 3)]
    assert sample(VM, 3306, table) == Sample(True, 3, 2)
    assert sample(VM, 3306, [Listener(VM, 3306, 4)]) == Sample(True, 0, 4)
    assert sample(VM, 3306, [Listener("::", 3306, 5)]).listening  # dual-stack wildcard
    assert sample(VM, 3306, [Listener(f"::ffff:{VM}", 3306, 7)]).listening  # IPv4-mapped, as Java binds
    assert not sample("fd00::5", 3306, [Listener("0.0.0.0", 3306, 6)]).listening
    assert sample(VM, 3306, [Listener("127.0.0.1", 3306, 1)]) == Sample(False, elsewhere=("127.0.0.1",))
    assert sample(VM, 3306, []) == Sample(False)


def _schedule(clock: FakeClock) -> Schedule:
    return Schedule(interval=1.0, active_interval=90.0, clock=clock)


def test_active_at_first_then_every_active_interval() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    listening = Sample(True, 0, 7)
    asked = []
    for _ in range(200):
        decision = schedule.decide(listening)
        if decision.active:
            asked.append((clock.now - 100.0, decision.reason))
            schedule.record(listening, PASS, timed_out=False)
        clock.now += 1.0
    assert asked == [(0.0, "first check"), (90.0, "periodic"), (180.0, "periodic")]


def test_a_new_socket_or_a_listener_back_is_asked_at_once() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    schedule.decide(Sample(True, 0, 7))
    schedule.record(Sample(True, 0, 7), PASS, timed_out=False)
    clock.now += 1
    assert schedule.decide(Sample(True, 0, 8)).reason == "a new listening socket (server restarted)"
    assert schedule.decide(Sample(False)) == schedule.decide(Sample(False))
    assert schedule.decide(Sample(True, 0, 8)).reason == "first check"


def test_a_stuck_accept_queue_is_a_suspicion_rate_limited() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    schedule.decide(Sample(True, 0, 7))
    schedule.record(Sample(True, 0, 7), PASS, timed_out=False)
    clock.now += 1
    assert not schedule.decide(Sample(True, 2, 7)).active  # one sample: a burst, maybe
    clock.now += 0.5
    assert not schedule.decide(Sample(True, 2, 7)).active  # two, but the last ask was 1.5 s ago (< SUSPICION_GAP)
    clock.now += 1
    assert not schedule.decide(Sample(True, 1, 7)).active  # shrinking: the server accepts
    clock.now += 1
    decision = schedule.decide(Sample(True, 3, 7))
    assert (decision.active, decision.reason) == (True, "accept queue not drained (3 waiting)")


def test_false_suspicions_back_off_until_the_queue_is_seen_empty() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    schedule.decide(Sample(True, 0, 7))
    schedule.record(Sample(True, 0, 7), PASS, timed_out=False)
    asked = []
    for _ in range(300):  # a server so busy that its queue is never empty, yet alive
        clock.now += 1
        if schedule.decide(Sample(True, 4, 7)).active:
            asked.append(clock.now - 100.0)
            schedule.record(Sample(True, 4, 7), PASS, timed_out=False)
    assert asked == [2.0, 6.0, 14.0, 30.0, 62.0, 126.0, 216.0]  # gaps 2, 4, 8, ... then active_interval (90)
    clock.now += 1
    schedule.decide(Sample(True, 0, 7))
    assert schedule.suspicion_gap == 2.0


def test_after_a_timeout_nobody_asks_until_the_server_accepts_again() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    schedule.decide(Sample(True, 0, 7))
    schedule.record(Sample(True, 1, 7), TIMEOUT, timed_out=True)
    for _ in range(60):  # hung: our probe and a client wait in the queue
        clock.now += 1
        decision = schedule.decide(Sample(True, 2, 7))
        assert not decision.active
    assert decision.reason == "2 connection(s) not accepted"
    clock.now += 1
    assert schedule.decide(Sample(True, 1, 7)).reason == "the server accepts connections again"  # shrinking


def test_a_server_that_accepts_but_never_answers_is_asked_less_and_less() -> None:
    """Each such probe is a handshake error to it: 5 s after the first timeout, then doubling, up to 90 s."""
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    asked = []
    for _ in range(400):
        if schedule.decide(Sample(True, 0, 7)).active:
            asked.append(clock.now - 100.0)
            schedule.record(Sample(True, 0, 7), TIMEOUT, timed_out=True)
        clock.now += 1
    assert asked == [0.0, 5.0, 15.0, 35.0, 75.0, 155.0, 245.0, 335.0]


def test_a_hang_costs_one_ask_per_active_interval_at_most() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    asked = 0
    for _ in range(600):
        decision = schedule.decide(Sample(True, 1 + asked, 7))
        if decision.active:
            asked += 1
            schedule.record(Sample(True, 1 + asked, 7), TIMEOUT, timed_out=True)
        clock.now += 1
    assert asked == 1 + 600 // 90  # the first, then one per active_interval


def test_a_refusal_is_confirmed_at_once_then_retried_after_5_s_doubling() -> None:
    clock = FakeClock(100.0)
    schedule = _schedule(clock)
    listening = Sample(True, 0, 7)
    asked = []
    for _ in range(20):
        decision = schedule.decide(listening)
        if decision.active:
            asked.append((clock.now - 100.0, decision.reason))
            schedule.record(listening, TOO_MANY, timed_out=False)
        clock.now += 1
    assert asked == [(0.0, "first check"), (1.0, "confirming a failure"), (6.0, "retrying"), (16.0, "retrying")]


class Active:
    kind = "mysql"

    def __init__(self, results: list[CheckResult]) -> None:
        self.results = results
        self.calls = 0

    async def __call__(self) -> CheckResult:
        self.calls += 1
        return self.results[min(self.calls, len(self.results)) - 1]

    async def aclose(self) -> None:
        pass


def _guarded(active: Active, table: list[list[Listener]], clock: FakeClock) -> GuardedCheck:
    def listeners() -> Iterable[Listener]:
        return table[0]

    return GuardedCheck(active, VM, 3306, interval=1.0, active_interval=90.0,
                        timed_out=lambda r: r.output.startswith("timed out"), listeners=listeners, clock=clock)


async def test_a_vanished_listener_fails_definitely_without_asking_the_server() -> None:
    clock = FakeClock(100.0)
    table = [[Listener("0.0.0.0", 3306, 7)]]
    active = Active([PASS])
    check = _guarded(active, table, clock)
    assert (await check()).ok
    clock.now += 1
    result = await check()
    assert (result.ok, result.output) == (True, "listening; MariaDB 10.11.19 answered a login probe (1698) 1s ago")
    table[0] = [Listener("127.0.0.1", 3306, 8)]
    result = await check()
    assert (result.ok, result.definite) == (False, True)
    assert result.output == f"not listening on {VM}:3306 (listening on 127.0.0.1 only)"
    assert active.calls == 1


async def test_the_monitor_flips_on_a_definite_failure_at_once() -> None:
    clock = FakeClock(100.0)
    table = [[Listener("0.0.0.0", 3306, 7)]]
    check = _guarded(Active([PASS]), table, clock)
    monitor = HealthMonitor(check, interval=1.0, rise=2, fall=2, clock=clock)
    await monitor.check_once()
    assert monitor.status == "passing"
    table[0] = []
    await monitor.check_once()
    assert status_of(monitor) == "critical"


async def test_no_listener_ever_seen_asks_every_time() -> None:
    """A server behind a DNAT (a container's published port) has no listener in the VM's namespace."""
    clock = FakeClock(100.0)
    active = Active([PASS])
    check = _guarded(active, [[]], clock)
    for _ in range(3):
        result = await check()
        assert result.ok and not result.definite
        assert "no listener in this network namespace" in result.output
    assert active.calls == 3


async def test_the_kernel_read_of_the_port_sees_a_stuck_queue_and_a_vanished_listener() -> None:
    """The default socket table (the port's listeners, read from the kernel) on real loopback sockets: a queue
    that does not drain starts the active check; a closed listener fails at once, definitely, unasked."""
    clock = FakeClock(100.0)
    server = socket.create_server(("127.0.0.1", 0), backlog=8)
    port = server.getsockname()[1]
    active = Active([PASS])
    check = GuardedCheck(active, "127.0.0.1", port, interval=1.0, active_interval=90.0,
                         timed_out=lambda r: False, clock=clock)
    waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # never accepted
    try:
        assert (await check()).ok and active.calls == 1  # the first check asks
        clock.now += 1
        assert (await check()).output.startswith("listening;") and active.calls == 1
        clock.now += 1
        await check()  # the queue (2) has not shrunk for two samples and the last ask is 2 s old
        assert active.calls == 2 and check.schedule.last_at == clock.now
        server.close()
        clock.now += 1
        result = await check()
        assert (result.ok, result.definite) == (False, True)
        assert result.output == f"not listening on 127.0.0.1:{port}"
        assert active.calls == 2
    finally:
        for sock in waiting:
            sock.close()
        server.close()
        await check.aclose()
