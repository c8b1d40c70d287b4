"""Phase 1, the spawn: from starting the workers until every VM has its one ready endpoint; where the time
went (requests, CPU, queue waits)."""

from __future__ import annotations

import time

from _common import cpu_seconds

from .constants import POLL_S, WORKER_START_S
from .errors import SetupError, _log
from .figures import Spawn
from .fleet import Fleet
from .metrics import spawn_counters
from .snapshot import endpoint_problems, try_snapshot


def cpu_so_far(fleet: Fleet) -> dict[str, float]:
    """CPU seconds so far of the agents' workers (those alive), the apiserver, etcd and the controller
    manager."""
    cpu = {"agents": sum(cpu_seconds(pid) for pid in fleet.pids())}
    for component in ("kube-apiserver", "etcd", "kube-controller-manager"):
        pid = fleet.bed.pid_of(component)
        cpu[component] = cpu_seconds(pid) if pid else 0.0
    return cpu


def phase_spawn(fleet: Fleet, timeout: float) -> Spawn:
    admin = fleet.bed.admin
    assert admin is not None
    spawn = Spawn()
    requests_before, waits_before = spawn_counters(admin.text("/metrics", timeout=30.0))
    cpu_before = cpu_so_far(fleet)
    begin = time.monotonic()
    fleet.start()
    expected = fleet.expected()
    problems: list[str] = ["not polled yet"]
    while time.monotonic() - begin < timeout:
        fleet.check()
        if fleet.all_started and spawn.workers_started_s is None:
            spawn.workers_started_s = time.monotonic() - begin
        snap = try_snapshot(admin, fleet.namespace, fleet.backend)
        problems = endpoint_problems(snap, expected, fleet.backend) if snap else ["apiserver did not answer"]
        if not problems:
            spawn.ready_s = time.monotonic() - begin
            break
        time.sleep(POLL_S)
    spawn.problems = problems
    took = time.monotonic() - begin
    requests, waits = spawn_counters(admin.text("/metrics", timeout=30.0))
    spawn.requests_per_vm = {k: (v - requests_before.get(k, 0.0)) / fleet.vms for k, v in requests.items()
                             if v - requests_before.get(k, 0.0) >= fleet.vms * 0.05}
    spawn.cpu = {k: 100 * (v - cpu_before.get(k, 0.0)) / took for k, v in cpu_so_far(fleet).items()}
    for level, (total, count) in waits.items():
        total_before, count_before = waits_before.get(level, (0.0, 0.0))
        if count - count_before >= 1:
            spawn.queue_wait_s[level] = (total - total_before) / (count - count_before)
    if spawn.ready_s is None:
        raise SetupError(f"{fleet.label}: endpoints not all ready {timeout:.0f}s after spawn: "
                         f"{len(problems)} problems, e.g. {problems[:5]}")
    while not fleet.all_started and time.monotonic() - begin < WORKER_START_S:
        fleet.check()
        time.sleep(0.1)
    spawn.workers_started_s = spawn.workers_started_s or time.monotonic() - begin
    _log(f"{fleet.label}: {fleet.vms} endpoints ready {spawn.ready_s:.1f}s after spawn "
         f"(workers reported started after {spawn.workers_started_s:.1f}s)")
    return spawn
