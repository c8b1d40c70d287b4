"""The parent: the test bed up, the runs (main, baseline or policies off, budget) in it, the table printed;
the exit status (0 targets met, 1 a target missed, 2 setup or correctness failure)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess

from .errors import SetupError, _log
from .figures import Figures, Run
from .run import run_fleet
from .table import print_table
from .testbed import Testbed


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        _log("needs root (network namespaces): sudo .venv/bin/python bench/fleet ...")
        return 2
    keep = args.keep_cluster or bool(os.environ.get("VMESH_KEEP_CLUSTER"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up too
    fig = Figures(vms=args.vms, workers=max(1, min(args.workers, args.vms)), backend=args.backend,
                  main=Run(label="agent", tree=str(args.agent_tree), policy=args.policy != "off"))
    try:
        with Testbed(args.cluster_dir, keep) as bed:
            try:
                if not args.only_budget:
                    run_fleet(bed, args, fig.main, full=True)
                    if args.baseline_tree:
                        fig.baseline = Run(label="baseline", tree=str(args.baseline_tree),
                                           policy=args.policy != "off")
                        run_fleet(bed, args, fig.baseline, full=False)
                    elif args.policy == "both":
                        fig.baseline = Run(label="policy-off", tree=str(args.agent_tree), policy=False)
                        run_fleet(bed, args, fig.baseline, full=False)
                if args.budget:
                    fig.paced = Run(label="budget", tree=str(args.agent_tree), policy=args.policy != "off",
                                    write_budget=args.budget)
                    run_fleet(bed, args, fig.paced, full=False)
            except SetupError as exc:
                fig.error = str(exc)
    except (SetupError, OSError, subprocess.TimeoutExpired) as exc:
        fig.error = fig.error or f"set-up: {exc}"
    except KeyboardInterrupt as exc:
        _log(f"interrupted ({exc or 'SIGINT'}); cleaned up")
        return 2
    ok = print_table(fig)
    if args.json:
        print(json.dumps(dataclasses.asdict(fig), indent=2))
    if fig.error:
        _log(fig.error[:3000])
        return 2
    return 0 if ok else 1
