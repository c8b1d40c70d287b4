"""A discovery report for people (a short table) and for scripts (one JSON object)."""

from __future__ import annotations

from typing import Any

from agent.discovery.scanner import DiscoveryReport


def report_json(report: DiscoveryReport) -> dict[str, Any]:
    a = report.addresses
    return {
        "addresses": {
            "candidates": [str(c.address) for c in a.candidates],
            "advertised": str(a.address) if a.address else None,
            "interface": a.interface or None,
            "reason": a.reason,
        },
        "listeners": [
            {
                "address": d.listener.address,
                "port": d.listener.port,
                "protocol": d.protocol,
                "likely_protocol": d.likely or None,  # from the port, when it was not probed
                "process": report.process_of(d.listener) or None,
                "decision": "register" if d.register else "skip",
                "service": d.service or None,
                "registered_address": str(d.address) if d.address else None,
                "reason": d.reason,
            }
            for d in report.decisions
        ],
    }


def report_table(report: DiscoveryReport) -> str:
    a = report.addresses
    lines = [
        f"address:    {a.address or 'none'} ({a.reason})",
        f"candidates: {' '.join(str(c.address) for c in a.candidates) or 'none'}  "
        "(as `hostname -I` lists them)",
        "",
    ]
    rows = [("LISTENER", "PROTOCOL", "PROCESS", "DECISION", "SERVICE", "REASON")]
    for d in report.decisions:
        host = f"[{d.listener.address}]" if ":" in d.listener.address else d.listener.address
        protocol = f"{d.likely}?" if d.likely else d.protocol
        rows.append((f"{host}:{d.listener.port}", protocol, report.process_of(d.listener) or "-",
                     "register" if d.register else "skip", d.service or "-", d.reason))
    if len(rows) == 1:
        lines.append("no TCP listeners")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=False)) + "  " + r[5] for r in rows]
    return "\n".join(line.rstrip() for line in lines) if len(rows) > 1 else "\n".join(lines)
