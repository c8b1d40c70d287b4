"""The fleet: N agents in W worker processes (`bench/fleet --worker SPEC`) inside the bench's network
namespace, one Kubernetes namespace; their reports, their kill and their stop."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import signal
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .constants import WORKER_STOP_S
from .errors import SetupError, _log
from .paths import SCRIPT, VENV_PYTHON
from .testbed import Testbed
from .vms import CONFIG, vm_address, vm_name


@dataclass(eq=False)
class Worker:
    index: int
    first: int
    count: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: dict[str, Any] | None = None
    killed: bool = False
    stopped: bool = False

    @property
    def vms(self) -> range:
        return range(self.first, self.first + self.count)


class Fleet:
    """N agents in W workers inside the bench's network namespace, one namespace in the cluster."""

    def __init__(self, bed: Testbed, label: str, tree: Path, *, vms: int, workers: int, backend: str,
                 log_level: str, identity: str, policy: bool, write_budget: float = 0.0) -> None:
        self.bed = bed
        self.write_budget = write_budget
        self.label = label
        self.tree = tree
        self.vms = vms
        self.backend = backend
        self.log_level = log_level
        self.namespace, self.token_file = bed.new_namespace("fleet")
        self.dir = bed.workdir / label
        self.dir.mkdir()
        if identity == "per-vm":
            self.token_file = Path(bed.per_vm_identities(self.namespace, vms, self.dir / "tokens"))
        elif identity == "enrolled":
            self.token_file = Path(bed.enrolled_identities(self.namespace, vms, self.dir / "tokens"))
        self.policy_s = bed.policies(policy, self.namespace)
        self.workers: list[Worker] = []
        self.n_workers = max(1, min(workers, vms))
        self.events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        self.failures: list[str] = []

    def template(self) -> str:
        config = CONFIG + (f"\n[heartbeat]\nwrite_budget = {self.write_budget!r}\n"
                           if self.write_budget else "")
        return string.Template(config).safe_substitute(
            namespace=self.namespace, backend=self.backend, workdir=str(self.dir),
            server=self.bed.env["APISERVER_GATEWAY_URL"], ca_file=self.bed.env["CA_FILE"],
            token_file=str(self.token_file))

    def start(self) -> None:
        python = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)
        env = dict(os.environ, PYTHONPATH=str(self.tree), PYTHONDONTWRITEBYTECODE="1")
        base, extra = divmod(self.vms, self.n_workers)
        first = 0
        for w in range(self.n_workers):
            count = base + (1 if w < extra else 0)
            spec = self.dir / f"worker-{w}.json"
            spec.write_text(json.dumps({"first": first, "count": count, "template": self.template(),
                                        "tree": str(self.tree), "log_level": self.log_level}))
            log = self.dir / f"worker-{w}.log"
            with log.open("wb") as err:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.bed.netns, python, str(SCRIPT), "--worker", str(spec)],
                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=self.tree)
            self.workers.append(Worker(w, first, count, proc, log))
            threading.Thread(target=self._read, args=(w, proc.stdout), daemon=True).start()
            first += count

    def _read(self, index: int, stdout: IO[bytes]) -> None:
        for raw in stdout:
            with contextlib.suppress(ValueError):
                self.events.put((index, json.loads(raw)))
        self.events.put((index, None))  # end of output: the worker exited

    def check(self) -> None:
        """Take in the workers' reports; a worker that died or an agent that failed is a setup failure."""
        while True:
            try:
                index, event = self.events.get_nowait()
            except queue.Empty:
                break
            worker = self.workers[index]
            if event is None:
                if not (worker.killed or worker.stopped):
                    worker.proc.wait()
                    self.failures.append(f"worker {index} exited {worker.proc.returncode}: "
                                         f"{worker.log.read_text(errors='replace')[-1500:]}")
            elif event.get("event") == "started":
                worker.started = event
                if event.get("failed"):
                    self.failures.append(f"worker {index}: agents failed to start: {event['failed']}")
                if not str(event.get("agent_file", "")).startswith(str(self.tree)):
                    self.failures.append(f"worker {index} imported the agent from {event.get('agent_file')}, "
                                         f"not from {self.tree}")
            elif event.get("event") == "failed":
                self.failures.append(f"{event.get('vm')}: {event.get('why')}")
        if self.failures:
            raise SetupError("; ".join(self.failures[:5]))

    @property
    def all_started(self) -> bool:
        return all(w.started is not None for w in self.workers)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.killed and not w.stopped]

    def expected(self) -> dict[str, str]:
        """vm -> address of every VM whose worker is alive."""
        return {vm_name(i): vm_address(i) for w in self.live() for i in w.vms}

    def worker_of(self, vm: str) -> Worker | None:
        index = int(vm.rsplit("-", 1)[1]) if re.fullmatch(r"fleet-\d+", vm) else -1
        return next((w for w in self.workers if index in w.vms), None)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.live()]

    def kill(self, workers: list[Worker]) -> None:
        for w in workers:
            w.killed = True
            w.proc.send_signal(signal.SIGKILL)
        for w in workers:
            w.proc.wait()

    def stop(self) -> float:
        """SIGTERM every live worker (graceful agent stop), SIGKILL what is left after WORKER_STOP_S."""
        begin = time.monotonic()
        live = self.live()
        for w in live:
            w.stopped = True
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        for w in live:
            try:
                w.proc.wait(timeout=max(1.0, WORKER_STOP_S - (time.monotonic() - begin)))
            except subprocess.TimeoutExpired:
                _log(f"{self.label}: worker {w.index} did not stop within {WORKER_STOP_S:.0f}s; killing it")
                w.proc.kill()
                w.proc.wait()
        return time.monotonic() - begin

    def log_summary(self) -> dict[str, int]:
        """Warning and error lines of the agents' logs, counted by level and event."""
        counts: collections.Counter[str] = collections.Counter()
        for w in self.workers:
            with contextlib.suppress(OSError):
                for raw in w.log.read_text(errors="replace").splitlines():
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        if raw.strip():
                            counts[f"(not JSON) {raw.strip()[:100]}"] += 1
                        continue
                    if isinstance(line, dict) and line.get("level") in ("warning", "error", "critical"):
                        counts[f"{line['level']}: {line.get('event', '')}"] += 1
        return dict(counts.most_common())
