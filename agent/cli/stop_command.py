"""`vmesh-agent stop-kind`: what the unit's `ExecStop=+` runs, as root and outside the sandbox, before systemd
sends SIGTERM. It asks systemd what kind of stop this is (agent.stop_kind) and writes it where the agent reads
it. It imports little (no aiohttp, no cluster client): every stop waits for it.
"""

from __future__ import annotations

import argparse
import sys

from agent.config import ConfigError, load_settings
from agent.stop_kind import StopKind, ask_systemd, write_kind

DEFAULT_UNIT = "vmesh-agent.service"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmesh-agent stop-kind",
        description="Tell what kind of stop systemd is doing to the unit (restart, stop, shutdown, unknown); "
                    "the unit's ExecStop runs it, as root.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unit", default=DEFAULT_UNIT,
                   help=f"the unit being stopped (default {DEFAULT_UNIT}; %%n)")
    p.add_argument("--write", default="", metavar="PATH",
                   help="write the kind there for the agent (the path given to `run --stop-kind-file`)")
    p.add_argument("--config", default="", metavar="PATH",
                   help="on a restart, check this config first: one the next start would refuse (exit 78) "
                        "makes it a stop for good")


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Always 0: a failing ExecStop would only be logged, and an unwritten kind counts as a stop for good."""
    kind, state, job = ask_systemd(args.unit)
    why = f"system {state or 'unknown'}, job {job or 'none'}"
    if kind is StopKind.RESTART and args.config:
        try:
            load_settings(args.config, require_cluster=True)
        except ConfigError as exc:
            kind = StopKind.STOP
            why += f"; the config is invalid, the next start would fail: {exc}"
    if args.write:
        try:
            write_kind(args.write, kind)
        except OSError as exc:
            print(f"vmesh-agent stop-kind: cannot write {args.write}: {exc}", file=sys.stderr)
    print(f"stop kind: {kind.value} ({why})")
    return 0
