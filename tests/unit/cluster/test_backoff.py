"""agent/cluster/backoff.py: doubling, jitter, reset, and the server's Retry-After honoured in every loop."""

from __future__ import annotations

from agent.cluster.backoff import Backoff
from agent.cluster.errors import Forbidden, Unavailable


def test_delays_double_up_to_the_cap_and_start_over_on_reset() -> None:
    backoff = Backoff(base=0.5, cap=3.0, rand=lambda: 0.5)  # the middle of the jitter: no change
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.next(cap=1.0) == 1.0
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_retry_after_is_waited_at_least_up_to_the_longest_wait_and_only_from_the_server() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rand=lambda: 0.5)
    busy = Unavailable("429 Too Many Requests", status=429, retry_after=4)
    assert backoff.next(after=busy) == 4.0  # the first delay would be 0.5
    assert backoff.next(cap=2.0, after=busy) == 4.0  # a transient cap does not cut what the server asked for
    assert backoff.next(after=Unavailable("connection refused")) == 2.0  # no Retry-After: the doubling's own
    assert backoff.next(after=Forbidden("403")) == 4.0
    assert Backoff(base=0.5, cap=1.0, rand=lambda: 0.5).next(after=Unavailable("", retry_after=60)) == 1.0
    assert Backoff(base=0.5, cap=1.0, rand=lambda: 0.5, longest_wait=2.0).next(
        after=Unavailable("", retry_after=60)) == 2.0
