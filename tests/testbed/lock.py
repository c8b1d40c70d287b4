"""One user of the test bed at a time on a machine: the VMs' bridge, the node namespace and the test cluster are
shared, so a second test session or bench waits for the first instead of tripping over its VMs and CPU."""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Iterator

LOCK = "/run/lock/vmesh-agent-testbed.lock"


@contextlib.contextmanager
def testbed_lock(who: str) -> Iterator[None]:
    with open(LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"\n{who}: waiting for another user of the test bed to finish (lock {LOCK})", file=sys.stderr,
                  flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
