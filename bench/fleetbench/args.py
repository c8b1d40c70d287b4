"""bench/fleet's command line (the parent's: --worker and --listener are read by the entry script)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.testbed.cluster import ROOT as REPO

from .constants import CLUSTER_DIR


def parse_args(argv: list[str], description: str) -> argparse.Namespace:
    """bench/fleet's arguments; `description` (for --help) is the first paragraph of its docstring."""
    p = argparse.ArgumentParser(prog="bench/fleet", description=description)
    p.add_argument("--vms", type=int, default=1000, help="agents (VMs) in the fleet (default 1000)")
    p.add_argument("--workers", type=int, default=4,
                   help="worker processes (default 4: one is 25 %% of the VMs)")
    p.add_argument("--window", type=float, default=60, help="steady-state window in s (default 60)")
    p.add_argument("--settle", type=float, default=15,
                   help="wait after every endpoint is ready, in s (default 15)")
    p.add_argument("--outage", type=float, default=60,
                   help="how long each component is stopped, in s (default 60)")
    p.add_argument("--after", type=float, default=20,
                   help="after an outage, watch for deleted objects this long, in s (default 20)")
    p.add_argument("--recovery-cap", type=float, default=120, help="give up waiting for recovery after s")
    p.add_argument("--spawn-timeout", type=float, default=300, help="give up waiting for the spawn after s")
    p.add_argument("--skip-outage", action="store_true", help="no outage phases")
    p.add_argument("--skip-etcd", action="store_true", help="no etcd outage")
    p.add_argument("--skip-reap", action="store_true", help="no reap phase")
    p.add_argument("--budget", type=float, default=50,
                   help="the budget phase's heartbeat.write_budget in Lease writes/s "
                        "(default 50; 0: no budget phase)")
    p.add_argument("--only-budget", action="store_true", help="the budget phase alone, not the main runs")
    p.add_argument("--kill-all-slot-holders", action="store_true",
                   help="reap phase: kill the workers of every reaper slot holder (worst case)")
    p.add_argument("--agent-tree", type=Path, default=REPO, help="source tree to import the agent from")
    p.add_argument("--baseline-tree", type=Path, help="also spawn and measure steady state with this tree")
    p.add_argument("--backend", choices=("endpointslice", "endpoints"), default="endpointslice")
    p.add_argument("--identity", choices=("enrolled", "per-vm", "shared"), default="enrolled",
                   help="each VM enrolled as `kubectl vmesh enroll` does it (default), one plain "
                        "ServiceAccount per VM (vmesh-fleet-<i>, which the policies do not match), or the "
                        "shared account")
    p.add_argument("--policy", choices=("both", "on", "off"), default="",
                   help="the admission policies on, off, or both: a second spawn and steady state with them "
                        "off (default: both with enrolled VMs and no --baseline-tree, else on)")
    p.add_argument("--cluster-dir", default=CLUSTER_DIR,
                   help=f"testcluster state dir (default {CLUSTER_DIR})")
    p.add_argument("--keep-cluster", action="store_true",
                   help="leave the control plane running (or VMESH_KEEP_CLUSTER=1)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="agents' log level (logs are summarised at the end)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON after the table")
    p.add_argument("--logs", type=Path,
                   help="copy the agents' logs (one file per worker) into this directory")
    args = p.parse_args(argv)
    args.agent_tree = args.agent_tree.resolve()
    if args.baseline_tree:
        args.baseline_tree = args.baseline_tree.resolve()
    for tree in filter(None, (args.agent_tree, args.baseline_tree)):
        if not any((tree / "agent" / path).exists() for path in ("daemon/agent.py", "agent.py")):
            p.error(f"{tree} has no agent/daemon/agent.py (nor agent/agent.py, as before issue 22)")
    if not args.policy:
        args.policy = "both" if args.identity == "enrolled" and not args.baseline_tree else "on"
    if args.policy == "both" and args.baseline_tree:
        p.error("--policy both compares with the policies off; --baseline-tree with another tree: "
                "one at a time")
    if args.only_budget and not args.budget:
        p.error("--only-budget needs a --budget above 0")
    if args.vms < 2 or args.vms > 250 * 256:
        p.error("--vms must be between 2 and 64000")
    return args
