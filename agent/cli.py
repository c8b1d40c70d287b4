"""The `vmesh-agent` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from agent import __version__
from agent.agent import Agent
from agent.config import ConfigError, Settings, load_settings
from agent.logs import configure

DEFAULT_CONFIG = "/etc/vmesh-agent/config.toml"
EXIT_CONFIG = 78  # EX_CONFIG; the unit's RestartPreventExitStatus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmesh-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vmesh-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent (what the systemd unit starts)")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"vmesh-agent {__version__}")
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"vmesh-agent: config {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: ok (vm {settings.vm_name}, namespace {settings.namespace}, backend {settings.backend})")
        return 0
    configure(settings.log.format, settings.log.level)
    return asyncio.run(_run(settings))


async def _run(settings: Settings) -> int:
    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)  # handlers only set flags
    return await agent.run()
