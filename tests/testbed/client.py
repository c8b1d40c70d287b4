"""A pod's database client that keeps connecting through the Service name, one new connection after another,
and records which VM answered each one (by the server's datadir, which is per VM).

It runs inside the node's network namespace with this checkout's Python (pymysql); its lines reach the test
through a pipe, timestamped with CLOCK_MONOTONIC, which every namespace shares, so they compare directly with
the test's own time.monotonic().
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from tests.testbed.mariadb import RATINGS_USER

_LOOP = """\
import sys, time, pymysql
host, user, password, pause, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
print("started", flush=True)
while True:
    started = time.monotonic()
    try:
        conn = pymysql.connect(host=host, port=3306, user=user, password=password, connect_timeout=timeout,
                               read_timeout=timeout, write_timeout=timeout)
        with conn.cursor() as cur:
            cur.execute("SELECT @@datadir")
            server = cur.fetchone()[0]
        conn.close()
        outcome = "ok"
    except Exception as exc:
        outcome, server = f"{type(exc).__name__}:{exc.args[0] if exc.args else ''}", "-"
    print(f"{started:.4f} {time.monotonic() - started:.4f} {outcome} {server}", flush=True)
    time.sleep(pause)
"""


@dataclass(frozen=True)
class Attempt:
    at: float  # monotonic, when the connect started
    took: float
    outcome: str  # "ok" or the exception's name and code, e.g. "OperationalError:2003"
    server: str  # the answering server's datadir, "-" when none answered

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def answered_by(self, datadir: str) -> bool:
        return self.ok and self.server.rstrip("/") == datadir.rstrip("/")


class Client:
    """Connects to `host` every `pause` seconds, from the node; stop() ends it. Use as a context manager."""

    def __init__(self, node_netns: str, host: str, pause: float = 0.02, timeout: float = 1.0) -> None:
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        user, password = RATINGS_USER
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", node_netns, sys.executable, "-c", _LOOP, host, user, password, str(pause),
             str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Its stderr is only read when it fails to start; afterwards it prints nothing there (errors are lines).
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "started":
            self._proc.kill()
            _, err = self._proc.communicate()
            raise AssertionError(f"the client did not start: {err}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            at, took, outcome, server = line.split(maxsplit=3)
            with self._lock:
                self.attempts.append(Attempt(float(at), float(took), outcome, server.strip()))

    def since(self, moment: float) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.at >= moment]

    def wait_for(self, count: int, after: float, timeout: float = 30) -> list[Attempt]:
        """At least `count` attempts started after `after`."""
        deadline = time.monotonic() + timeout
        while len(found := self.since(after)) < count:
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise AssertionError(f"the client made {len(found)} of {count} connections")
            time.sleep(0.05)
        return found

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=5)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def failover_time(attempts: list[Attempt], killed_at: float, survivor: str, run: int = 20) -> float | None:
    """Seconds from the kill to the first of `run` consecutive connections answered by `survivor` (a server's
    datadir; a refused or failed connection, or one answered by another server, breaks the run); None if there
    is no such run."""
    streak: list[Attempt] = []
    for attempt in attempts:
        if attempt.at < killed_at:
            continue
        if attempt.answered_by(survivor):
            streak.append(attempt)
            if len(streak) == run:
                return streak[0].at - killed_at
        else:
            streak = []
    return None
