"""One run: a fleet taken through its phases (the full one, a baseline's spawn and steady state, or the budget
phase), stopped and its logs summarised whatever happened."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .budget import finish_budget, phase_budget
from .errors import NotCorrect, _log
from .figures import Run
from .fleet import Fleet
from .outage import phase_outage
from .reap import phase_reap
from .spawn import phase_spawn
from .steady import phase_steady
from .stop import watch_the_stop_clean_up
from .testbed import Testbed


def run_fleet(bed: Testbed, args: argparse.Namespace, run: Run, *, full: bool) -> None:
    """Take a fleet through its phases, filling in `run` as they complete (it keeps what was measured when a
    phase fails)."""
    label, tree = run.label, Path(run.tree)
    fleet = Fleet(bed, label, tree, vms=args.vms, workers=args.workers, backend=args.backend,
                  log_level=args.log_level, identity=args.identity, policy=run.policy,
                  write_budget=run.write_budget)
    try:
        _log(f"{label}: {args.vms} agents from {tree} in {fleet.n_workers} workers, "
             f"namespace {fleet.namespace}")
        run.spawn = phase_spawn(fleet, args.spawn_timeout)
        run.agent_file = str((fleet.workers[0].started or {}).get("agent_file", ""))
        if run.write_budget:
            run.budget, first = phase_budget(fleet, run.write_budget, args.recovery_cap)
            run.steady = phase_steady(bed, fleet, args.window, 0.0)
            finish_budget(fleet, run.budget, first, run.steady)
            if not args.skip_reap:
                run.reap = phase_reap(fleet, False, args.recovery_cap)
            return
        run.steady = phase_steady(bed, fleet, args.window, args.settle)
        if full and not args.skip_outage:
            run.outages.append(phase_outage(fleet, "kube-apiserver", args.outage, args.after,
                                            args.recovery_cap))
            if not args.skip_etcd:
                run.outages.append(phase_outage(fleet, "etcd", args.outage, args.after, args.recovery_cap))
        if full and not args.skip_reap:
            run.reap = phase_reap(fleet, args.kill_all_slot_holders, args.recovery_cap)
    except NotCorrect as exc:
        run.not_run = f"{exc}"
        _log(f"{label}: the remaining phases are not run: {exc}")
    finally:
        bed.restore()  # so that the agents can deregister
        if fleet.workers:
            run.stop_s = fleet.stop()
            watch_the_stop_clean_up(fleet, run)
        run.agent_log = fleet.log_summary()
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for w in fleet.workers:
                shutil.copy(w.log, args.logs / f"{label}-{w.log.name}")
