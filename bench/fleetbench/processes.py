"""Commands and processes: sh(), a process's connections to the apiserver."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from .errors import SetupError


# Not tests.testbed.vm.sh: a failure is a SetupError here (the table, exit 2); it takes env, input, timeout.
def sh(*args: str, check: bool = True, env: dict[str, str] | None = None,
       input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, env=env,
                            input=input)
    if check and result.returncode != 0:
        raise SetupError(f"{' '.join(args)}: {(result.stderr or result.stdout).strip()[-1000:]}")
    return result


def established_to(pid: int, ip: str, port: int) -> int:
    """ESTABLISHED TCP sockets to ip:port in the network namespace of `pid` (its /proc/<pid>/net/tcp)."""
    remote = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[2] == remote and fields[3] == "01":
            count += 1
    return count

