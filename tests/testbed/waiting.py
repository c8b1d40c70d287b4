"""Waiting for a condition in a real system: poll it until true, with a deadline and a useful failure."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | Literal[False] | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Return check()'s first truthy result; fail after `timeout` seconds naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = check()
    return last


def terminate(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM a test bed process and reap it; SIGKILL it if it has not exited after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
