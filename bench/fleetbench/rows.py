"""The table's rows, phase by phase: each a figure, its value (and the baseline's), its target and whether it
was met (None: information only, or a backend not held to the targets). Pure."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .constants import (
    BUDGET_SETTLE_S,
    GRACE_S,
    HEARTBEAT_S,
    REAP_SLACK_S,
    STOP_CLEAN_S,
    TARGET_READS,
    TARGET_RECOVERY_S,
    TARGET_RENEWAL_TOLERANCE,
    TARGET_SPAWN_S,
    TARGET_WATCH_EVENTS,
)
from .figures import Run, Spawn, Steady


@dataclass
class Row:
    phase: str
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: information only
    baseline: str = ""


def _num(value: float | None, fmt: str = ".1f", unit: str = "") -> str:
    return "never" if value is None else f"{value:{fmt}}{unit}"


def stop_rows(phase: str, run: Run) -> list[Row]:
    """SIGTERM to every remaining agent at once (issue 21, item 3): every deregistration completes in time,
    and what the Leases owned goes with them through the garbage collector."""
    if run.stop_s is None:
        return []
    abandoned = sum(n for line, n in run.agent_log.items() if "clean-up abandoned" in line)
    rows = [Row(phase, "SIGTERM to every worker exited", _num(run.stop_s, unit=" s")),
            Row(phase, "clean-ups abandoned at the stop deadline", str(abandoned), "0", abandoned == 0),
            Row(phase, "VM Leases / held slots / slices left at exit", run.left_after_stop)]
    if run.stop_clean_s is not None:
        rows.append(Row(phase, "nothing left after (from the exit)", _num(run.stop_clean_s, unit=" s"),
                        f"≤ {STOP_CLEAN_S:.0f} s", True))
    else:
        rows.append(Row(phase, f"left {STOP_CLEAN_S:.0f} s after the exit",
                        run.left_at_end or run.left_after_stop, "0 / 0 / 0", False))
    return rows


def spawn_rows(run: Run, held: bool, baseline: Spawn | None = None) -> list[Row]:
    s = run.spawn
    if s is None:
        return []
    b = baseline or Spawn()
    rows = [Row("spawn", "every endpoint ready after", _num(s.ready_s, unit=" s"),
                f"≤ {TARGET_SPAWN_S:.0f} s",
                (s.ready_s is not None and s.ready_s <= TARGET_SPAWN_S) if held else None,
                _num(b.ready_s, unit=" s") if baseline else ""),
            Row("spawn", "workers reported all started after", _num(s.workers_started_s, unit=" s"))]
    for who in ("kube-apiserver", "etcd", "kube-controller-manager", "agents"):
        if who in s.cpu:
            rows.append(Row("spawn", f"{who} CPU over the spawn", f"{s.cpu[who]:.1f} %",
                            baseline=f"{b.cpu[who]:.1f} %" if who in b.cpu else ""))
    for level, wait in sorted(s.queue_wait_s.items(), key=lambda kv: -kv[1])[:3]:
        rows.append(Row("spawn", f"mean queue wait, priority level {level}", f"{1000 * wait:.1f} ms",
                        baseline=f"{1000 * b.queue_wait_s[level]:.1f} ms" if level in b.queue_wait_s else ""))
    for what, per_vm in sorted(s.requests_per_vm.items(), key=lambda kv: -kv[1])[:10]:
        rows.append(Row("spawn", f"requests per VM: {what}", f"{per_vm:.2f}",
                        baseline=f"{b.requests_per_vm[what]:.2f}" if what in b.requests_per_vm else ""))
    return rows


def steady_rows(run: Run, baseline: Steady | None, held: bool) -> list[Row]:
    s = run.steady
    if s is None:
        return []
    lo, hi = (1 - TARGET_RENEWAL_TOLERANCE) / HEARTBEAT_S, (1 + TARGET_RENEWAL_TOLERANCE) / HEARTBEAT_S
    figures: list[tuple[str, Any, str, bool | None]] = [  # (figure, how to show it, target, met)
        ("reads per VM per s (GET+LIST)", lambda x: f"{x.reads_per_vm_s:.4f}", f"≤ {TARGET_READS}",
         s.reads_per_vm_s <= TARGET_READS),
        ("writes per VM per s", lambda x: f"{x.writes_per_vm_s:.4f}", f"≤ {s.writes_target:.4f}",
         s.writes_per_vm_s <= s.writes_target),
        ("Lease renewals per VM per s", lambda x: f"{x.lease_renewals_per_vm_s:.4f}", f"{lo:.2f}..{hi:.2f}",
         lo <= s.lease_renewals_per_vm_s <= hi),
        ("  renewals per VM in the window, min/max", lambda x: "{} / {}".format(*x.renewals_min_max), "",
         None),
        ("watch events per VM per s", lambda x: f"{x.watch_events_per_vm_s:.3f}", f"≤ {TARGET_WATCH_EVENTS}",
         s.watch_events_per_vm_s <= TARGET_WATCH_EVENTS),
        ("watch events per s (all), MB per s",
         lambda x: f"{x.watch_events_per_s:.1f}, {x.watch_mb_per_s:.3f}", "", None),
        ("watches restarted per VM per s", lambda x: f"{x.watch_requests_per_vm_s:.4f}", "", None),
        ("slot Leases, their renewals per s", lambda x: f"{x.slots}, {x.slot_renewals_per_s:.2f}", "", None),
        ("apiserver CPU", lambda x: f"{x.apiserver_cpu:.1f} %", "", None),
        ("etcd CPU", lambda x: f"{x.etcd_cpu:.1f} %", "", None),
        ("agents' CPU (all workers)", lambda x: f"{x.agents_cpu:.1f} %", "", None),
        ("agent RSS per VM", lambda x: f"{x.rss_per_vm_mb:.2f} MB", "", None),
        ("connections to the apiserver per VM", lambda x: f"{x.connections_per_vm:.2f}", "", None),
        ("open watches per VM (apiserver gauge)", lambda x: f"{x.open_watches_per_vm:.2f}", "", None),
    ]
    return [Row("steady", figure, show(s), target, met if held else None, show(baseline) if baseline else "")
            for figure, show, target, met in figures]


def outage_rows(run: Run, held: bool, backend: str) -> list[Row]:
    rows: list[Row] = []
    for o in run.outages:
        phase = f"{o.component} out {o.down_s:.0f} s"
        deleted = o.leases_deleted + o.slices_deleted
        rows += [
            Row(phase, f"live VMs' Leases / slices deleted (of {o.live_vms})",
                f"{o.leases_deleted} / {o.slices_deleted if backend == 'endpointslice' else '-'}", "0",
                deleted == 0 if held else None),
            Row(phase, "every endpoint correct again after", _num(o.correct_from_s, unit=" s"),
                f"≤ {TARGET_RECOVERY_S:.0f} s",
                (o.correct_from_s is not None and o.correct_from_s <= TARGET_RECOVERY_S) if held else None),
            Row(phase, "first correct / apiserver ready after",
                f"{_num(o.first_correct_s, unit=' s')} / {_num(o.apiserver_ready_s, unit=' s')}"),
        ]
    return rows


def reap_rows(run: Run, held: bool, vms: int) -> list[Row]:
    r = run.reap
    if r is None:
        return []
    holders = r.note or f"{r.killed_slot_holders} of {r.slots} slot holders"
    share = r.killed_vms / vms
    rows = [
        Row("reap", "killed", f"workers {r.killed_workers}: {r.killed_vms} VMs ({share:.0%}), {holders}"),
        Row("reap", "killed holders' slots taken over after",
            _num(r.takeover_s, unit=" s") if r.killed_slot_holders else "n/a"),
        # The reaping is the agents' part: a reaper deletes a dead VM's Lease. Its slices go through the
        # garbage collector (no VM may delete another's objects under the isolation policy), at
        # kube-controller-manager's pace: 250 slices of VMs reaped together take it about 6 s here, one VM's
        # well under a second.
        Row("reap", "killed VMs' Leases deleted by reapers after", _num(r.leases_gone_s, unit=" s"),
            f"≤ {r.bound_s:.1f} s",
            (r.leases_gone_s is not None and r.leases_gone_s <= r.bound_s) if held else None),
        Row("reap", "  bound: lease + grace + takeover + slack",
            f"{r.lease_duration_s:.0f} + {GRACE_S:.0f} + "
            f"{(r.takeover_s or 0) if r.takeover_counts else 0:.1f} + {REAP_SLACK_S:.0f}"),
        Row("reap", "their slices and ready addresses gone after", _num(r.gone_s, unit=" s")),
        Row("reap", "  the garbage collector's part, after the last Lease",
            _num(r.gone_s - r.leases_gone_s, unit=" s")
            if r.gone_s is not None and r.leases_gone_s is not None else "-"),
        Row("reap", "live VMs whose Lease was replaced", str(r.live_reaped), "0",
            r.live_reaped == 0 if held else None),
    ]
    if share > 0.26:
        rows.insert(1, Row("reap", f"  NOTE: {share:.0%} killed, not 25 %", "(--workers 4 or more)"))
    return rows


def budget_rows(run: Run, held: bool, vms: int) -> list[Row]:
    b = run.budget
    if b is None:
        return []
    phase = f"budget {b.budget:g} writes/s"
    s = run.steady
    rows = [
        Row(phase, "every endpoint ready after", _num(run.spawn.ready_s if run.spawn else None, unit=" s")),
        Row(phase, f"paced Leases carry {b.duration_s} s (every {b.interval_s:.1f} s) after",
            _num(b.settled_s, unit=" s"), f"≤ {BUDGET_SETTLE_S:.0f} s",
            b.settled_s is not None if held else None),
        Row(phase, "fleet Lease writes per s (VMs' + slots')", _num(b.writes_per_s, ".1f"), f"≤ {b.budget:g}",
            (b.writes_per_s is not None and b.writes_per_s <= b.budget) if held else None),
        Row(phase, "live VMs' Leases or slices replaced", str(b.live_replaced)
            + (f" {b.replaced_examples}" if b.replaced_examples else ""), "0",
            b.live_replaced == 0 if held else None),
    ]
    if s is not None:
        rows.append(Row(phase, "apiserver CPU, writes per VM per s",
                        f"{s.apiserver_cpu:.1f} %, {s.writes_per_vm_s:.4f}"))
    return rows + [dataclasses.replace(r, phase=f"{phase}: reap") for r in reap_rows(run, held, vms)]
