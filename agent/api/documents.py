"""What the local API says about an agent, as plain JSON-ready dicts. Pure reads of the agent's view."""

from __future__ import annotations

import datetime
import time
from typing import Any

from agent import __version__
from agent.api.agent_view import AgentView
from agent.cluster.tokens import utc

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
HEARTBEAT_CRITICAL_FAILURES = 3


def _ago(monotonic: float | None) -> float | None:
    return None if monotonic is None else round(time.monotonic() - monotonic, 3)


def _wall(monotonic: float | None) -> str | None:
    if monotonic is None:
        return None
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=time.monotonic() - monotonic)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def blockers(agent: AgentView) -> list[tuple[str, bool]]:
    """Why nothing is registered when the cause is outside this VM's services, in order, each with whether
    it is critical: the cluster refuses the token (expired or revoked) or it is another VM's; another live
    agent holds this VM's Lease (critical once its renewals were seen). STATUS= says the first,
    /v1/health all."""
    found: list[tuple[str, bool]] = []
    guard, account = agent.credentials.guard, agent.credentials.account
    if guard is not None and guard.problem:
        found.append((guard.problem, True))
    elif account is not None and not account.registers:
        found.append((account.message, True))
    beat = agent.heartbeat
    if beat is not None and beat.conflict:
        found.append((beat.conflict, beat.conflict_confirmed))
    return found


def status_line(agent: AgentView) -> str:
    """The state in words, for systemd's STATUS= and `vmesh-agent status` (at most 200 characters)."""
    rec = agent.reconciler
    if agent.stopping:
        return agent.stopping
    blocked = blockers(agent)
    if blocked:
        return blocked[0][0][:200]
    if rec is not None and rec.last_error and not rec.service_errors:
        return f"waiting for cluster: {rec.last_error}"[:200]
    report = agent.report
    if report is not None and report.addresses.address is None:
        return f"no VM address: {report.addresses.reason}"
    failed = rec.service_errors if rec is not None else {}
    ready = sorted({r.service for r in agent.registrations if r.ready} - failed.keys())
    waiting = sorted({r.service for r in agent.registrations if not r.ready} - set(ready) - failed.keys())
    if not ready and not waiting and not failed:
        return "running; nothing to register"
    address = report.addresses.address if report else ""
    parts = [f"registered {', '.join(ready)} at {address}"] if ready else []
    parts += [f"not ready: {', '.join(waiting)}"] if waiting else []
    parts += [f"{name} not registered: {error}" for name, error in sorted(failed.items())]
    return "; ".join(parts)[:200]


def health(agent: AgentView) -> dict[str, Any]:
    """Consul's convention: passing / warning / critical, with the reasons."""
    critical: list[str] = []
    warning: list[str] = []
    if not agent.loops_alive():
        critical.append(f"agent loops not running: {agent.failure or 'stopping'}")
    if agent.report is not None and agent.report.addresses.address is None:
        critical.append(f"no VM address: {agent.report.addresses.reason}")
    for problem, is_critical in blockers(agent):
        (critical if is_critical else warning).append(problem)
    beat = agent.heartbeat
    if beat is not None and beat.consecutive_failures:
        (critical if beat.consecutive_failures >= HEARTBEAT_CRITICAL_FAILURES else warning).append(
            f"heartbeat failing ({beat.consecutive_failures} in a row)")
    if agent.reconciler is not None and agent.reconciler.last_error:
        warning.append(f"last sync failed: {agent.reconciler.last_error}")
    for svc in services(agent):
        for reg in svc["registrations"]:
            where = f"{svc['name']} {reg['address']}:{reg['port']}"
            if reg["maintenance"]:
                warning.append(f"{where} in maintenance: {reg['maintenance']}")
            elif reg["check"] and reg["check"]["status"] == CRITICAL:
                warning.append(f"{where} check failing: {reg['check']['output']}")
            elif not reg["present"]:
                warning.append(f"{where} not listening any more")
    status = CRITICAL if critical else WARNING if warning else PASSING
    return {"status": status, "reasons": critical + warning}


def status(agent: AgentView) -> dict[str, Any]:
    s = agent.settings
    report = agent.report
    rec, beat = agent.reconciler, agent.heartbeat
    return {
        "vm": s.vm_name,
        "namespace": s.namespace,
        "backend": s.backend,
        "version": __version__,
        "health": health(agent)["status"],
        "address": {
            "advertised": str(report.addresses.address) if report and report.addresses.address else None,
            "reason": report.addresses.reason if report else "discovery has not run yet",
            "candidates": [str(c.address) for c in report.addresses.candidates] if report else [],
        },
        "cluster": {
            "server": agent.server,
            # The cluster answered the last sync: it succeeded, or was refused (403, 422, ...),
            # not lost on the way.
            "reachable": bool(rec and rec.reached),
            "last_error": rec.last_error if rec and rec.last_error else None,
        },
        "last_sync": {"at": _wall(rec.last_success if rec else None),
                      "seconds_ago": _ago(rec.last_success if rec else None)},
        "last_heartbeat": {"at": _wall(beat.last_renewal if beat else None),
                           "seconds_ago": _ago(beat.last_renewal if beat else None),
                           "lease": beat.name if beat else None,
                           "holder": str(beat.identity) if beat else None,
                           "conflict": (beat.conflict or None) if beat else None,
                           # The renewal interval in force and why: scaled with the fleet
                           # (heartbeat.write_budget).
                           "interval_seconds": beat.interval if beat else None,
                           "lease_duration_seconds": beat.duration_seconds if beat else None,
                           "fleet": beat.pace.fleet if beat else None,
                           "pace": beat.pace.reason if beat else None},
        "reaper": reaper_status(agent),
        "credentials": credentials_status(agent),
        "uptime_seconds": round(time.monotonic() - agent.started_at, 3),
        "stopping": agent.stopping or None,
        "python": agent.interpreter.as_dict(),
    }


def credentials_status(agent: AgentView) -> dict[str, Any]:
    """Whose token the agent uses, until when, and when it renews it."""
    c = agent.credentials
    account, renewal, guard = c.account, c.renewal, c.guard
    token = c.current_token()
    claims = token.claims if token else None
    return {
        "account": account.username or None if account else None,
        "kind": account.kind.value if account else None,
        "problem": (guard.problem if guard else "") or
                   (account.message if account and not account.registers else "") or
                   (c.tokens.problem if c.tokens else "") or None,
        "token_file": token.path if token else None,
        "expires": utc(claims.expires_at) if claims and claims.expires_at else None,
        "next_renewal": utc(renewal.next_renewal) if renewal and renewal.next_renewal else None,
        "renewals": renewal.renewals if renewal else 0,
        "refused_requests": guard.rejections if guard else 0,  # 401s: the slow probes included
    }


def reaper_status(agent: AgentView) -> dict[str, Any]:
    """Whether this agent reaps now (it holds a slot), and if not, why not."""
    reaper, slots = agent.reaper, agent.slots
    held = slots.held if slots else None
    problem = (reaper.problem if reaper and held else "") or (slots.problem if slots else "")
    if not agent.settings.reaper.enabled:
        state = "disabled"
    elif problem:
        state = problem
    elif held and reaper and reaper.braking:
        state = f"brake engaged: {reaper.braking}"
    elif held:
        state = f"reaping (holds {held})"
    elif slots is not None and not slots.eligible:
        state = "standing by (until this agent holds its VM's Lease)"
    else:
        state = "standing by (another agent holds each reaper slot)"
    return {"enabled": agent.settings.reaper.enabled, "slot": held, "state": state,
            "brake": bool(held and reaper and reaper.braking), "problem": problem or None,
            "reaped": reaper.reaped if reaper else 0}


def services(agent: AgentView) -> list[dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    present = {(r.service, r.port, r.address) for r in agent.present}
    desired = {(r.service, r.port, r.address): r.ready for r in agent.registrations}
    for reg in sorted(agent.tracked):
        monitor = agent.monitor(reg)
        result = monitor.last_result if monitor else None
        check = None
        if monitor is not None:
            check = {
                "type": agent.check_kind(reg),
                "status": monitor.status if result else None,
                "output": result.output if result else None,
                "duration_ms": round(result.duration * 1000, 2) if result else None,
                "checks": monitor.checks,
                "failures": monitor.failures,
                "since_seconds": _ago(monitor.last_change),
            }
        by_name.setdefault(reg.service, []).append({
            "port": reg.port,
            "protocol": reg.protocol,
            "address": str(reg.address),
            "present": (reg.service, reg.port, reg.address) in present,
            "ready": desired.get((reg.service, reg.port, reg.address), False),
            "maintenance": agent.maintenance_reasons.get(reg.service),
            "check": check,
        })
    for name in agent.maintenance_reasons.keys() - by_name.keys():
        by_name[name] = []
    rec = agent.reconciler
    return [
        {"name": name, "maintenance": agent.maintenance_reasons.get(name), "registrations": regs,
         "registered": rec is not None and rec.registered(name),
         "error": rec.service_errors.get(name) if rec is not None else None}
        for name, regs in sorted(by_name.items())
    ]
