"""A VM whose wall clock is off from the apiserver's, its monotonic clock untouched: Debian's libfaketime
(package faketime) preloaded into the agent.

The `faketime` command does the same (it sets LD_PRELOAD and FAKETIME) but runs the program as its child and does
not pass SIGTERM on: a test stopping the agent would stop only the wrapper. So the agent is started under `env`
with what `faketime -m -f OFFSET` would set, which execs the agent itself.
"""

from __future__ import annotations

import glob
import ssl
import subprocess
import sys
import time
from pathlib import Path

LIBRARY = "/usr/lib/*/faketime/libfaketimeMT.so.1"  # the multi-threaded variant (`faketime -m`): the agent has threads


def skewed_clock(offset: str) -> tuple[str, ...]:
    """The command prefix that runs a program with its wall clock `offset` ("+50m", "-10m", "+300s") from the
    real one; CLOCK_MONOTONIC stays the real one (FAKETIME_DONT_FAKE_MONOTONIC)."""
    found = sorted(glob.glob(LIBRARY))
    if not found:
        raise AssertionError(f"no {LIBRARY}: install Debian's faketime (scripts/bootstrap does)")
    return ("env", f"LD_PRELOAD={found[0]}", f"FAKETIME={offset}", "FAKETIME_DONT_FAKE_MONOTONIC=1")


def clocks_under(prefix: tuple[str, ...]) -> tuple[float, float]:
    """(wall clock - real wall clock, monotonic - real monotonic) as a program run under `prefix` sees them."""
    before_wall, before_mono = time.time(), time.monotonic()
    out = subprocess.run([*prefix, sys.executable, "-c", "import time; print(time.time(), time.monotonic())"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    return float(out[0]) - before_wall, float(out[1]) - before_mono


def certificates_age(ca_file: str) -> float:
    """Seconds since the test apiserver's CA and serving certificate became valid (made by `testcluster up`). An
    agent whose clock is further behind sees them not yet valid, and refuses the apiserver."""
    pki = Path(ca_file).parent
    ages = []
    for name in ("ca.crt", "apiserver.crt"):
        out = subprocess.run(["openssl", "x509", "-noout", "-startdate", "-in", str(pki / name)], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        ages.append(time.time() - ssl.cert_time_to_seconds(out.strip().partition("=")[2]))
    return min(ages)
