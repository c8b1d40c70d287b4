"""The table: every phase's rows of every run, printed with the runs' notes, and the result (PASS when no
target is missed)."""

from __future__ import annotations

from .constants import AGENT_RESOURCES
from .figures import Figures
from .rows import Row, budget_rows, outage_rows, reap_rows, spawn_rows, steady_rows, stop_rows


def table_rows(fig: Figures) -> list[Row]:
    held = fig.backend == "endpointslice"
    base = fig.baseline.steady if fig.baseline else None
    rows = spawn_rows(fig.main, held, fig.baseline.spawn if fig.baseline else None)
    rows += steady_rows(fig.main, base, held)
    rows += outage_rows(fig.main, held, fig.backend) + reap_rows(fig.main, held, fig.vms)
    if fig.main.not_run:
        rows.append(Row("not run", "the remaining phases", "fleet not correct", "", False if held else None))
    rows += stop_rows("stop", fig.main)
    if fig.paced is not None:
        rows += budget_rows(fig.paced, held, fig.vms)
        rows += stop_rows(f"budget {fig.paced.write_budget:g} writes/s: stop", fig.paced)
        if fig.paced.not_run:
            rows.append(Row("budget", "the remaining phases", "fleet not correct", "",
                            False if held else None))
    return rows


def print_table(fig: Figures) -> bool:
    rows = table_rows(fig)
    main = fig.main
    print(f"\nvmesh-agent fleet: {fig.vms} VMs in {fig.workers} workers, backend {fig.backend}, "
          f"agent from {main.agent_file or main.tree}")
    print(f"admission policies (policy.yaml, vmesh-vm-enrollment): {'on' if main.policy else 'off'}")
    if fig.baseline and fig.baseline.label == "policy-off":
        print("baseline: the same agent and fleet, admission policies off")
    elif fig.baseline:
        print(f"baseline: agent from {fig.baseline.agent_file or fig.baseline.tree}")
    if main.steady:
        print(f"steady-state window {main.steady.window_s:.0f} s; CPU in % of one core; "
              f"requests counted for {', '.join(AGENT_RESOURCES)}")
    with_base = fig.baseline is not None
    header = (f"{'phase':<24} {'figure':<44} {'value':>18}" + (f" {'baseline':>14}" if with_base else "")
              + f"  {'target':<16} result")
    print(header)
    print("-" * len(header))
    for r in rows:
        result = "" if r.ok is None else ("ok" if r.ok else "MISSED <<<")
        print(f"{r.phase:<24} {r.figure:<44} {r.value:>18}" + (f" {r.baseline:>14}" if with_base else "")
              + f"  {r.target:<16} {result}")
    print("-" * len(header))
    for run in filter(None, (fig.main, fig.baseline, fig.paced)):
        if run.steady:
            top = sorted(run.steady.by_request.items(), key=lambda kv: -kv[1])[:8]
            print(f"{run.label} requests per VM per s: " + ", ".join(f"{k} {v:.4f}" for k, v in top))
        if run.not_run:
            print(f"{run.label}: the remaining phases were not run: {run.not_run}")
        if run.agent_log:
            print(f"{run.label} agent log, warnings and errors: "
                  + "; ".join(f"{n} x {what}" for what, n in list(run.agent_log.items())[:8]))
    if fig.backend != "endpointslice":
        print(f"backend {fig.backend}: figures reported, not held to the targets")
    ok = all(r.ok is not False for r in rows)
    if fig.error:
        print(f"RESULT: ERROR ({fig.error[:300]})")
    else:
        print(f"RESULT: {'PASS' if ok else 'FAIL'}")
    return ok
