"""Which listeners are probed again: definite answers are kept, silence is retried with a doubling delay."""

from __future__ import annotations

from agent.discovery.identify import Identity
from agent.discovery.listeners import Listener
from agent.discovery.probe_memory import ProbeMemory
from tests.unit.fakes import FakeClock

MARIADB = Listener("0.0.0.0", 3306, inode=7)
SILENT = Identity("unknown", "no greeting within 1 s; will retry")


def test_a_definite_answer_is_kept_for_the_sockets_life() -> None:
    memory = ProbeMemory(FakeClock(0.0))
    assert memory.recall(MARIADB) is None
    memory.record(MARIADB, Identity("mysql"))
    assert memory.recall(MARIADB) == Identity("mysql")
    memory.record(Listener("0.0.0.0", 22, 8), Identity("unknown"))  # answered, but not a protocol we know
    assert memory.recall(Listener("0.0.0.0", 22, 8)) == Identity("unknown")


def test_silence_is_probed_again_after_a_doubling_delay() -> None:
    clock = FakeClock(0.0)
    memory = ProbeMemory(clock, first=1.0, cap=4.0)
    due_after = []
    for _ in range(5):
        memory.record(MARIADB, SILENT)
        start = clock.now
        while memory.recall(MARIADB) is not None:
            assert memory.recall(MARIADB) == SILENT  # until due, the last (unsettled) answer stands
            clock.now += 0.5
        due_after.append(clock.now - start)
    assert due_after == [1.0, 2.0, 4.0, 4.0, 4.0]
    memory.record(MARIADB, Identity("mysql"))  # MariaDB finished starting
    clock.now += 1000
    assert memory.recall(MARIADB) == Identity("mysql")


def test_a_socket_that_is_gone_is_forgotten() -> None:
    memory = ProbeMemory(FakeClock(0.0))
    memory.record(MARIADB, Identity("mysql"))
    memory.keep_only([Listener("0.0.0.0", 3306, inode=9)])  # restarted: a new socket
    assert memory.recall(MARIADB) is None


def test_a_silent_socket_is_probed_max_probes_times_then_left_alone() -> None:
    clock = FakeClock(0.0)
    memory = ProbeMemory(clock, first=1.0, cap=300.0, max_probes=6)
    probes = 0
    for _ in range(100_000):  # a day of discovery passes, 1 s apart
        if memory.recall(MARIADB) is None:
            probes += 1
            memory.record(MARIADB, SILENT)
        clock.now += 1
    assert probes == 6
    settled = memory.recall(MARIADB)
    assert settled is not None and not settled.unsettled
    assert settled.silent == "no greeting within 1 s, 6 times; not probed again until it listens anew"
    memory.keep_only([Listener("0.0.0.0", 3306, inode=9)])  # restarted
    assert memory.recall(Listener("0.0.0.0", 3306, inode=9)) is None


def test_what_was_not_probed_is_forgotten_when_the_allow_list_may_have_changed() -> None:
    """Issue 20: allowing a protocol by SIGHUP did not register its running listener: "not probed" was kept for
    the socket's life. A reload forgets it (a definite answer is kept)."""
    from agent.discovery.identify import NOT_PROBED  # noqa: PLC0415

    memory = ProbeMemory(FakeClock(0.0))
    redis = Listener("0.0.0.0", 6379, inode=9)
    memory.record(redis, NOT_PROBED)
    memory.record(MARIADB, Identity("mysql"))
    assert memory.recall(redis) == NOT_PROBED
    memory.forget_unprobed()
    assert memory.recall(redis) is None and memory.recall(MARIADB) == Identity("mysql")
