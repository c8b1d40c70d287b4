"""A check that looks at the kernel's socket table every interval and touches the server seldom.

Every active check is seen by the server: a MySQL login attempt is one "Access denied" line in MariaDB's error
log, an HTTP GET one access-log line. So the server is touched only when it tells something new:

- every `interval`, passively: is there a LISTEN socket for the port that covers the advertised address (a
  sock_diag dump of that port's listeners alone, nothing sent to the server)? None → failing at once, and
  definite (a vanished listener is read from the kernel, not a flaky probe, so the monitor does not wait for
  `fall` to confirm it);
- actively (the wrapped check): at the first call, when the listener comes back or is a new socket (a
  restarted server), every `active_interval`, and at once on a suspicion: the listener's accept queue held
  connections at two samples in a row without shrinking (a server that no longer accepts: hung);
- after an active check timed out, none is started while the server has not accepted even that one (its
  accept queue is not empty and not shrinking): each connection a hung server finds in its queue when it wakes
  is a handshake error to it (MariaDB counts it towards max_connect_errors). The status stays failing; the
  next active check runs when the queue drains, or after `active_interval`.

Bounds at the defaults (interval 1 s, active_interval 90 s, timeout 1 s): a killed server is failing within
one interval; a hung one within 2 intervals + timeout + interval/2 (3.5 s) while clients connect (when no
suspicion proved false in the last SUSPICION_GAP), and within active_interval + timeout + interval/2 (92.5 s)
when nobody does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.discovery.listeners import Listener, PortListeners
from agent.health.checks import Check, CheckResult, short

# After an active failure that was not a timeout (a refusal, "too many connections"), the next active check
# confirms it at the next call; then retries come after this long, doubling up to active_interval. The same
# wait applies after a timeout once the server has taken the probe off its accept queue: a server that accepts
# but never answers is not asked every second (each such probe is a handshake error to it).
RETRY_FAILING = 5.0
# A stuck accept queue starts an active check when the last one is this old; each suspicion that proves false
# (the server answers) doubles it, up to active_interval, until a sample sees the queue empty: a server whose
# queue is never empty under load is not asked more than about once per active_interval for long.
SUSPICION_GAP = 2.0


@dataclass(frozen=True)
class Sample:
    """What the socket table says about the port at the advertised address."""

    listening: bool
    accept_queue: int = 0  # connections completed by the kernel, not accepted by the server
    socket: int = 0  # inode of the (first) covering listener: a new one is a restarted server
    elsewhere: tuple[str, ...] = ()  # addresses the port listens on that do not cover the advertised one


# The socket table spells addresses as inet_ntop does: the wildcards only so. Compared as strings, as `sample`
# runs every second: parsing them with ipaddress was about a quarter of a check's CPU.
WILDCARDS = frozenset({"0.0.0.0", "::"})


def covers(listener: Listener, address: str) -> bool:
    """Whether a connection to `address` (an IP address) reaches `listener` (same address, or a wildcard of
    its family; an IPv6 wildcard also takes IPv4 unless the socket is v6-only, which the socket table does not
    say)."""
    if listener.address == address or (listener.address.startswith("::ffff:")
                                       and str(listener.ip) == address):
        return True  # the same address, or its IPv4-mapped form on an IPv6 socket (as Java binds)
    if listener.address not in WILDCARDS:
        return False
    return listener.address == "::" or ":" not in address


def sample(address: str, port: int, listeners: Iterable[Listener]) -> Sample:
    """The Sample for address:port from a listener table (pure)."""
    on_port = [lst for lst in listeners if lst.port == port]
    covering = [lst for lst in on_port if covers(lst, address)]
    if not covering:
        return Sample(False, elsewhere=tuple(sorted({lst.address for lst in on_port})))
    return Sample(True, max(lst.accept_queue for lst in covering), covering[0].inode)


@dataclass(frozen=True)
class Decision:
    active: bool  # run the active check now
    reason: str  # why (for an active check) or what the passive look says


class Schedule:
    """When to run the active check, from passive samples and active results. Pure state, clock injected."""

    def __init__(self, *, interval: float, active_interval: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.interval = interval
        self.active_interval = max(active_interval, interval)
        self._clock = clock
        self.last: CheckResult | None = None  # last active result; None: none since the listener (re)appeared
        self.last_at = 0.0  # when the last active check started
        self._asked_at = 0.0
        self.timed_out = False  # the last active check timed out (the server did not even answer)
        self.failures_in_row = 0
        self._socket = 0  # the listener the last active check talked to
        self._queue: int | None = None  # accept queue at the previous sample
        self.suspicion_gap = SUSPICION_GAP
        self._suspecting = False  # the active check running is a suspicion's

    def decide(self, now_sample: Sample) -> Decision:
        """Whether the active check runs now. Call with every sample; a failing sample
        (not listening) resets."""
        previous_queue, self._queue = self._queue, now_sample.accept_queue if now_sample.listening else None
        if not now_sample.listening:
            self.last = None  # whatever comes back is checked afresh
            return Decision(False, "not listening")
        if now_sample.accept_queue == 0:
            self.suspicion_gap = SUSPICION_GAP
        now = self._clock()
        self._asked_at = now  # an active check decided now is dated from its start: periods do not drift
        since = now - self.last_at
        if self.last is None:
            return Decision(True, "first check")
        if now_sample.socket != self._socket:
            return Decision(True, "a new listening socket (server restarted)")
        if self.timed_out:
            # Not even accepted: another connection would only wait beside it (and count against the server
            # when it wakes). Run again when the server accepts again, or after active_interval.
            drained = now_sample.accept_queue == 0 or (previous_queue is not None
                                                        and now_sample.accept_queue < previous_queue)
            if drained and since >= self._retry_gap():
                return Decision(True, "the server accepts connections again")
            if since >= self.active_interval:
                return Decision(True, "periodic")
            return Decision(False, f"{now_sample.accept_queue} connection(s) not accepted")
        if not self.last.ok:
            if self.failures_in_row == 1:
                return Decision(True, "confirming a failure")
            if since >= self._retry_gap():
                return Decision(True, "retrying")
            return Decision(False, "failing")
        stuck = previous_queue is not None and 0 < previous_queue <= now_sample.accept_queue
        if stuck and since >= min(self.suspicion_gap, self.active_interval):
            self._suspecting = True
            return Decision(True, f"accept queue not drained ({now_sample.accept_queue} waiting)")
        if since >= self.active_interval:
            return Decision(True, "periodic")
        return Decision(False, "listening")

    def _retry_gap(self) -> float:
        """After `failures_in_row` failures:
        5 s after the first (a timeout) or second (confirmed), doubling."""
        doublings = max(0, self.failures_in_row - (1 if self.timed_out else 2))
        return min(RETRY_FAILING * 2.0 ** doublings, self.active_interval)

    def record(self, now_sample: Sample, result: CheckResult, *, timed_out: bool) -> None:
        self.last, self.last_at, self.timed_out = result, self._asked_at, timed_out
        self.failures_in_row = 0 if result.ok else self.failures_in_row + 1
        self._socket = now_sample.socket
        if self._suspecting and result.ok:
            self.suspicion_gap = min(self.suspicion_gap * 2, self.active_interval)
        self._suspecting = False


class GuardedCheck:
    """`active` run seldom, the socket table every call (see the module's doc). The wrapped check's timeout
    output is recognised by `timed_out(result)`. `listeners`: the listeners of the port, by default read from
    the kernel for that port alone (each service's check reads its own port: a read costs the same whatever
    else listens on the VM, and every sample is of the moment of its check)."""

    def __init__(self, active: Check, address: str, port: int, *, interval: float, active_interval: float,
                 timed_out: Callable[[CheckResult], bool],
                 listeners: Callable[[], Iterable[Listener]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = active.kind
        self.active = active
        self.address, self.port = address, port
        self._timed_out = timed_out
        self._own_table: PortListeners | None = None
        if listeners is None:
            listeners = self._own_table = PortListeners(port)
        self._listeners = listeners
        self._clock = clock
        self.schedule = Schedule(interval=interval, active_interval=active_interval, clock=clock)
        self.active_checks = 0  # how many times the server was touched
        # A listener for the port was seen in this network namespace. Until then a missing one may be a server
        # behind a DNAT (a container's published port without a userland proxy): asked every call instead.
        self._seen_listener = False

    def __repr__(self) -> str:
        return f"GuardedCheck({self.active!r}, active_interval={self.schedule.active_interval})"

    async def __call__(self) -> CheckResult:
        started = self._clock()
        try:
            now = sample(self.address, self.port, self._listeners())
        except OSError as exc:  # no socket table: fall back to the active check every time
            result = await self.active()
            return CheckResult(result.ok, short(f"{result.output} (socket table unreadable: {exc})"),
                               result.duration)
        decision = self.schedule.decide(now)
        if not now.listening and not self._seen_listener:
            result = await self.active()
            self.active_checks += 1
            if not result.ok:
                return result
            return CheckResult(True, short(f"{result.output} (no listener in this network namespace: "
                                           "the server is asked at every check)"), result.duration)
        if not now.listening:
            where = f" (listening on {', '.join(now.elsewhere)} only)" if now.elsewhere else ""
            return CheckResult(False, f"not listening on {self._target()}{where}", self._clock() - started,
                               definite=True)
        self._seen_listener = True
        if decision.active:
            result = await self.active()
            self.active_checks += 1
            self.schedule.record(now, result, timed_out=not result.ok and self._timed_out(result))
            return result
        last = self.schedule.last
        assert last is not None  # decide() runs the active check whenever there is none
        ago = f"{self._clock() - self.schedule.last_at:.0f}s ago"
        if last.ok:
            return CheckResult(True, short(f"listening; {last.output} {ago}"), self._clock() - started)
        return CheckResult(False, short(f"{decision.reason}; {last.output} {ago}"), self._clock() - started)

    def _target(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    async def aclose(self) -> None:
        if self._own_table is not None:
            self._own_table.close()
        await self.active.aclose()
