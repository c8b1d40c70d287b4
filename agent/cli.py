"""The `vmesh-agent` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from agent import __version__
from agent.agent import Agent
from agent.config import ConfigError, Settings, load_settings, parse_settings
from agent.discovery.render import report_json, report_table
from agent.discovery.scanner import Scanner
from agent.logs import configure

DEFAULT_CONFIG = "/etc/vmesh-agent/config.toml"
EXIT_CONFIG = 78  # EX_CONFIG; the unit's RestartPreventExitStatus
EXIT_NO_ADDRESS = 3  # discover: no address to advertise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmesh-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vmesh-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent (what the systemd unit starts)")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    disc = sub.add_parser("discover", help="show what this VM would register, and why (no cluster needed)")
    disc.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG} when it exists)")
    disc.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"vmesh-agent {__version__}")
        return 0
    if args.command == "discover":
        return _discover(args.config, args.json)
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


def _discover(config: str | None, as_json: bool) -> int:
    try:
        if config is None and not Path(DEFAULT_CONFIG).exists():
            settings = parse_settings("", require_cluster=False)
        else:
            settings = load_settings(config or DEFAULT_CONFIG, require_cluster=False)
    except ConfigError as exc:
        print(f"vmesh-agent: config {config or DEFAULT_CONFIG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    s = settings
    report = asyncio.run(Scanner(s.discovery.probe_timeout).discover(
        s.discovery.allow if s.discovery.enabled else {}, address=s.address.address,
        interface=s.address.interface, cidr=s.address.cidr))
    print(json.dumps(report_json(report), indent=2) if as_json else report_table(report))
    return 0 if report.addresses.address else EXIT_NO_ADDRESS


async def _run(settings: Settings) -> int:
    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)  # handlers only set flags
    return await agent.run()
