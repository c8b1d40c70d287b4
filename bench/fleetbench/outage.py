"""Phase 3, the outages: kube-apiserver, then etcd, stopped and started again; what of the live VMs was
deleted meanwhile, and how soon every endpoint is correct again. wait_correct() opens the later phases too."""

from __future__ import annotations

import time

from .constants import POLL_S
from .errors import NotCorrect, _log
from .figures import Outage
from .fleet import Fleet
from .rows import _num
from .snapshot import Snapshot, endpoint_problems, try_snapshot


# Not tests.testbed.waiting.wait_until: too late is NotCorrect here (the next phases skipped), no assertion.
def wait_correct(fleet: Fleet, timeout: float) -> Snapshot:
    assert fleet.bed.admin is not None
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while time.monotonic() < deadline:
        fleet.check()
        snap = try_snapshot(fleet.bed.admin, fleet.namespace, fleet.backend)
        problems = (endpoint_problems(snap, fleet.expected(), fleet.backend) if snap
                    else ["apiserver did not answer"])
        if snap and not problems and all(vm in snap.leases for vm in fleet.expected()):
            return snap
        time.sleep(POLL_S)
    raise NotCorrect(f"fleet not correct {timeout:.0f} s later: {len(problems)} problems, "
                     f"e.g. {problems[:3]}")


def phase_outage(fleet: Fleet, component: str, seconds: float, after: float, cap: float) -> Outage:
    bed, admin = fleet.bed, fleet.bed.admin
    assert admin is not None
    before = wait_correct(fleet, cap)
    expected = fleet.expected()
    _log(f"{fleet.label}: stopping {component} for {seconds:.0f}s")
    begin = time.monotonic()
    bed.stop(component)
    time.sleep(max(0.0, seconds - (time.monotonic() - begin)))
    bed.start(component)
    back = time.monotonic()
    outage = Outage(component, down_s=back - begin, live_vms=len(expected))
    lease_gone: set[str] = set()
    slice_gone: set[str] = set()
    correct_since: float | None = None
    while True:
        now = time.monotonic()
        if (now - back >= after and correct_since is not None) or now - back >= cap:
            break
        fleet.check()
        if outage.apiserver_ready_s is None and admin.ready():
            outage.apiserver_ready_s = time.monotonic() - back
        snap = try_snapshot(admin, fleet.namespace, fleet.backend)
        if snap is not None:
            lease_gone |= {vm for vm in expected if snap.leases.get(vm) != before.leases[vm]}
            if fleet.backend != "endpoints":
                slice_gone |= {vm for vm in expected if snap.slices.get(vm) != before.slices.get(vm)}
        correct = snap is not None and not endpoint_problems(snap, expected, fleet.backend)
        if correct and outage.first_correct_s is None:
            outage.first_correct_s = now - back
        correct_since = (correct_since or now) if correct else None
        time.sleep(POLL_S)
    outage.observed_s = time.monotonic() - back
    outage.correct_from_s = correct_since - back if correct_since is not None else None
    outage.leases_deleted, outage.slices_deleted = len(lease_gone), len(slice_gone)
    outage.deleted_examples = sorted(lease_gone | slice_gone, key=lambda vm: int(vm.rsplit("-", 1)[1]))[:5]
    _log(f"{fleet.label}: {component} back; correct from {_num(outage.correct_from_s, '.2f', ' s')} on, "
         f"{outage.leases_deleted} Leases and {outage.slices_deleted} slices of live VMs deleted")
    return outage
