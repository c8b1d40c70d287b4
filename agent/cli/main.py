"""The `vmesh-agent` command: the daemon (`run`) and the tools an admin uses around it.

Exit codes (stable, for scripts):
  0   success; for `status`, the agent is passing
  1   `status`: the agent reports warning or critical; otherwise a failure (the message says which)
  2   wrong usage
  3   `discover`: the VM has no address to advertise
  69  the agent is not running (nothing answers on its socket)
  77  the socket cannot be opened: not in group vmesh-agent, or a write needs root
  78  the config is invalid (one line names the key)
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agent import __version__, interpreter
from agent.cli.cluster_commands import AgentRunning, deregister, reap_once
from agent.cli.local_api import EXIT_NOPERM, ClientError, call
from agent.cli.stop_command import add_arguments as add_stop_kind_arguments
from agent.cli.stop_command import run as stop_kind
from agent.cluster.errors import ClusterError
from agent.config import ApiSettings, ConfigError, Settings, load_settings, parse_listen, parse_settings
from agent.daemon.agent import Agent
from agent.daemon.sdnotify import Notifier
from agent.discovery.listeners import scan_listeners
from agent.discovery.render import report_json, report_table
from agent.discovery.scanner import Scanner
from agent.logs import configure

DEFAULT_CONFIG = "/etc/vmesh-agent/config.toml"
DEFAULT_SOCKET = ApiSettings().socket  # the packaged default, written once in agent/config.py
EXIT_FAILED = 1
EXIT_NO_ADDRESS = 3
EXIT_CONFIG = 78  # EX_CONFIG; the unit's RestartPreventExitStatus


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmesh-agent",
                                     description="Registers this VM's services into Kubernetes.",
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vmesh-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, *, config: bool = True, socket: bool = False,
                as_json: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        if config:
            p.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
        if socket:
            p.add_argument("--socket",
                           help=f"the agent's socket (default: the config's api.socket, {DEFAULT_SOCKET})")
        if as_json:
            p.add_argument("--json", action="store_true", help="JSON output, for scripts")
        return p

    run = command("run", "run the agent (what the systemd unit starts)", as_json=False)
    run.add_argument("--stop-kind-file", default="", metavar="PATH",
                     help="where the unit's ExecStop writes the kind of stop "
                          "(restart keeps the registrations)")
    check = command("check-config", "validate a config file and exit", config=False, as_json=False)
    check.add_argument("path", nargs="?", default=DEFAULT_CONFIG)
    command("discover", "show what this VM would register, and why (no cluster needed)")
    command("status", "the running agent: address, cluster, last sync and heartbeat, health", socket=True)
    services = command("services", "the running agent's services, registrations and checks", socket=True)
    services.add_argument("name", nargs="?", help="one service")
    maint = command("maintenance", "mark a service not ready (kept across restarts), or end it", socket=True)
    maint.add_argument("service")
    maint.add_argument("state", choices=["on", "off"])
    maint.add_argument("--reason", default="", help="shown in status and logs")
    command("deregister",
            "remove this VM's objects from the cluster now (decommissioning; stop the agent first)")
    command("reap", "one pass of peer reaping: watch the Leases for a lease period, remove the dead VMs'")
    command("version", "print the version", config=False)
    # Normally reached through agent/__main__.py's fast path; listed here for --help.
    add_stop_kind_arguments(command("stop-kind", "what the unit's ExecStop runs (as root): tell the agent "
                                    "whether systemd restarts or stops it", config=False, as_json=False))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            python = interpreter.inspect()
            print(json.dumps({"version": __version__, "python": python.as_dict()}) if args.json else
                  f"vmesh-agent {__version__} on Python {python.version}"
                  + (f"\n  ! {python.problem}" if python.problem else ""))
            return 0
        if args.command == "check-config":
            settings = _settings(args.path, require_cluster=True)
            print(f"{args.path}: ok (vm {settings.vm_name}, namespace {settings.namespace}, "
                  f"backend {settings.backend})")
            return 0
        if args.command == "run":
            path = args.config or DEFAULT_CONFIG
            settings = _settings(path, require_cluster=True)
            configure(settings.log.format, settings.log.level)
            return asyncio.run(_run(settings, path, args.stop_kind_file))
        if args.command == "stop-kind":
            return stop_kind(args)
        if args.command == "discover":
            return _discover(args)
        if args.command in ("status", "services", "maintenance"):
            return _local_api(args)
        if args.command in ("deregister", "reap"):
            settings = _settings(args.config or DEFAULT_CONFIG, require_cluster=True)
            configure(settings.log.format, settings.log.level)  # logs to stderr; stdout is the answer
            return asyncio.run(_cluster_command(args.command, settings, args.json))
    except ConfigError as exc:
        print(f"vmesh-agent: config {exc.path}: {exc}" if exc.path else f"vmesh-agent: config: {exc}",
              file=sys.stderr)
        return EXIT_CONFIG
    except ClientError as exc:
        print(f"vmesh-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    raise AssertionError(args.command)


def _settings(path: str, *, require_cluster: bool) -> Settings:
    try:
        return load_settings(path, require_cluster=require_cluster)
    except ConfigError as exc:
        exc.path = path
        raise


async def _run(settings: Settings, config_path: str, stop_kind_file: str) -> int:
    agent = Agent(settings, config_path=config_path, notifier=Notifier(), stop_kind_file=stop_kind_file)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)  # handlers only set flags
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    return await agent.run()


def _discover(args: argparse.Namespace) -> int:
    if args.config is None and not Path(DEFAULT_CONFIG).exists():
        settings = parse_settings("", require_cluster=False)
    else:
        settings = _settings(args.config or DEFAULT_CONFIG, require_cluster=False)
    s = settings
    report = asyncio.run(Scanner(s.discovery.probe_timeout).discover(
        s.discovery.allow if s.discovery.enabled else {}, address=s.address.address,
        interface=s.address.interface, cidr=s.address.cidr, own=own_listeners(s)))
    if args.json:
        print(json.dumps({**report_json(report), "discovery_enabled": s.discovery.enabled}, indent=2))
    else:
        print((DISCOVERY_OFF if not s.discovery.enabled else "") + report_table(report))
    return 0 if report.addresses.address else EXIT_NO_ADDRESS


DISCOVERY_OFF = ("discovery is off (discovery.enabled = false): only [[service]] entries are registered; set "
                 "[discovery] enabled = true for the allow-list hints below to apply\n\n")


def own_listeners(settings: Settings) -> list[int]:
    """Socket inodes of the daemon's metrics listener (`[metrics] listen`): `discover` leaves it out, as the
    daemon's own discovery does, instead of probing the agent for a MySQL greeting."""
    if not settings.metrics.listen:
        return []
    host, port = parse_listen(settings.metrics.listen)
    bound = ipaddress.ip_address(host)
    return [lst.inode for lst in scan_listeners()
            if lst.port == port and ipaddress.ip_address(lst.address) == bound]


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    path = args.config or DEFAULT_CONFIG
    try:
        return load_settings(path, require_cluster=False).api.socket
    except ConfigError:
        if args.config:
            raise
        return DEFAULT_SOCKET  # no readable default config: the packaged default socket


def _local_api(args: argparse.Namespace) -> int:
    sock = _socket_path(args)
    if args.command == "maintenance":
        status, body = call(sock, "PUT", f"/v1/services/{args.service}/maintenance",
                            {"enable": args.state == "on", "reason": args.reason})
        if status == 403:
            raise ClientError(f"{body.get('error')}; run it with sudo", EXIT_NOPERM)
        if status != 200:
            print(f"vmesh-agent: {body.get('error', body) if isinstance(body, dict) else body}",
                  file=sys.stderr)
            return EXIT_FAILED
        print(json.dumps(body) if args.json else
              f"{args.service}: maintenance {args.state}" + (f" ({args.reason})" if args.reason else ""))
        return 0
    if args.command == "services":
        path = f"/v1/services/{args.name}" if args.name else "/v1/services"
        status, body = call(sock, "GET", path)
        if status != 200:
            print(f"vmesh-agent: {body.get('error', body) if isinstance(body, dict) else body}",
                  file=sys.stderr)
            return EXIT_FAILED
        services = [body] if args.name else body
        print(json.dumps(body, indent=2) if args.json else _services_text(services))
        return 0
    _, body = call(sock, "GET", "/v1/status")
    _, health = call(sock, "GET", "/v1/health")
    body["health_reasons"] = health.get("reasons", [])
    print(json.dumps(body, indent=2) if args.json else _status_text(body))
    return 0 if body.get("health") == "passing" else EXIT_FAILED


def _ago(value: Any) -> str:
    return "never" if value is None else f"{value:.1f}s ago"


def _cluster_state(cluster: dict[str, Any]) -> str:
    if not cluster["reachable"]:
        return f"UNREACHABLE: {cluster['last_error'] or 'no sync yet'}"
    return f"reachable, sync FAILING: {cluster['last_error']}" if cluster["last_error"] else "reachable"


def _status_text(s: dict[str, Any]) -> str:
    addr, cluster = s["address"], s["cluster"]
    lines = [
        f"vmesh-agent {s['version']} on {s['vm']} (namespace {s['namespace']}, backend {s['backend']}): "
        f"{s['health']}",
        f"address    {addr['advertised'] or 'none'} ({addr['reason']})",
        f"cluster    {cluster['server']} " + _cluster_state(cluster),
        f"last sync  {_ago(s['last_sync']['seconds_ago'])}; "
        f"heartbeat {_ago(s['last_heartbeat']['seconds_ago'])} (lease {s['last_heartbeat']['lease']})",
        f"reaper     {s['reaper']['state']}, {s['reaper']['reaped']} dead VM(s) reaped",
    ]
    if (beat := s["last_heartbeat"]) and beat.get("interval_seconds"):
        lines.insert(4, f"pace       every {beat['interval_seconds']:.3g}s, "
                        f"lease {beat['lease_duration_seconds']}s: {beat['pace']}")
    if python := s.get("python"):
        lines.append(f"python     {python['version']} ({python['executable']})" + (
            f", compiled modules {len(python['compiled_loaded'])} of "
            f"{len(python['compiled_loaded']) + len(python['compiled_failed'])} loaded"
            if python["built_for"] else ""))
        if python["problem"]:
            lines.append(f"  ! {python['problem']}")
    if s.get("stopping"):  # "restarting: registrations kept" (a restart) or "deregistering"
        lines.insert(1, f"stopping   {s['stopping']}")
    if (token := s.get("credentials") or {}).get("kind"):
        lines.append(f"token      {token['account'] or 'unknown account'} ({token['kind']})"
                     + (f", expires {token['expires']}" if token["expires"] else "")
                     + (f", renews {token['next_renewal']}" if token["next_renewal"] else ""))
    lines += [f"  ! {reason}" for reason in s.get("health_reasons", [])]
    return "\n".join(lines)


def _services_text(services: list[dict[str, Any]]) -> str:
    if not services:
        return "no services"
    lines = []
    for svc in services:
        head = svc["name"] + (f"  [maintenance: {svc['maintenance']}]" if svc.get("maintenance") else "")
        head += f"  [sync failed: {svc['error']}]" if svc.get("error") else ""
        lines.append(head)
        for reg in svc["registrations"]:
            check = reg.get("check") or {}
            state = "ready" if reg["ready"] else "NOT READY"
            detail = f"{check.get('type')} check {check.get('status') or 'pending'}: " \
                     f"{check.get('output') or '-'}" if check else "not listening"
            lines.append(f"  {reg['address']}:{reg['port']} {reg['protocol']:<8} {state:<9} {detail}")
    return "\n".join(lines)


async def _cluster_command(command: str, settings: Settings, as_json: bool) -> int:
    if command == "deregister":
        try:
            removed = await deregister(settings)
        except (AgentRunning, ClusterError) as exc:
            print(f"vmesh-agent: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(json.dumps({"removed": removed}) if as_json else
              ("removed " + ", ".join(removed)) if removed else "nothing registered for this VM")
        return 0
    reaped = await reap_once(settings)
    print(json.dumps({"reaped": reaped}) if as_json else
          ("reaped " + ", ".join(reaped)) if reaped else "no dead VMs")
    return 0
