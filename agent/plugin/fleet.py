"""`kubectl vmesh get vms`: the fleet as the cluster holds it, one row per VM. Pure: objects in,
rows and text out.

A VM is known by its Lease `vmesh-<vm>` (running, or died unreaped) or by its ServiceAccount `vmesh-vm-<vm>`
(enrolled). Its identity is "legacy" when no such ServiceAccount exists: the agent can then only be writing
with the shared `vmesh-agent` account of the first releases (or someone's own credentials).
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.cluster.objects import (
    ANNOTATION_HEARTBEAT,
    ANNOTATION_HEARTBEAT_PACE,
    LABEL_SERVICE_NAME,
    LABEL_VM,
)

SERVICE_ACCOUNT_PREFIX = "vmesh-vm-"
LEGACY_ACCOUNT = "vmesh-agent"
LEGACY = "legacy"
ANNOTATION_MACHINE = "vmesh.dev/holder-machine"
ANNOTATION_VERSION = "vmesh.dev/agent-version"
ANNOTATION_BACKEND = "vmesh.dev/backend"
ANNOTATION_SERVICES = "vmesh.dev/services"

Body = dict[str, Any]


def service_account_name(vm: str) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}{vm}"


@dataclass
class VmRow:
    vm: str
    identity: str  # the VM's own ServiceAccount, or "legacy"
    holder: str = ""  # the Lease's holderIdentity: <vm>/<machine-id>/<boot-id>/<pid>
    machine: str = ""
    renewed_ago: float | None = None  # seconds, on the admin's clock against the VM's renewTime
    lease_duration: float | None = None  # the Lease's leaseDurationSeconds
    heartbeat: str = ""  # the renewal interval in force, e.g. "20s" (scaled with the fleet's size)
    pace: str = ""  # why it is what it is
    backend: str = ""
    agent_version: str = ""
    services: list[str] = field(default_factory=list)
    ready: int = 0
    not_ready: int = 0
    addresses: list[str] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        """Not renewed for twice its Lease duration and a minute more, by the admin's clock: dead and not
        reaped (a lone VM has no peer to reap it), or its clock far behind. For people; no reaper reads it."""
        if self.renewed_ago is None or not self.lease_duration:
            return False
        return self.renewed_ago > 2 * self.lease_duration + 60

    def as_dict(self) -> Body:
        return {**asdict(self), "stale": self.stale}


def fleet(*, leases: list[Body], accounts: list[Body], slices: list[Body], workloads: list[Body],
          now: datetime.datetime) -> list[VmRow]:
    """Rows sorted by VM name. `workloads` are WorkloadEntries and ExternalWorkloads (mesh backends)."""
    rows: dict[str, VmRow] = {}
    enrolled = {_label(a, LABEL_VM) for a in accounts
                if a["metadata"]["name"] == service_account_name(_label(a, LABEL_VM))}

    def row(vm: str) -> VmRow:
        if vm not in rows:
            rows[vm] = VmRow(vm, service_account_name(vm) if vm in enrolled else LEGACY)
        return rows[vm]

    for vm in enrolled:
        row(vm)
    for lease in leases:
        vm = _label(lease, LABEL_VM)
        if not vm:
            continue
        r, notes = row(vm), lease["metadata"].get("annotations") or {}
        spec = lease.get("spec") or {}
        r.holder = str(spec.get("holderIdentity") or "")
        parts = r.holder.split("/")
        r.machine = notes.get(ANNOTATION_MACHINE) or (parts[1] if len(parts) >= 2 else "")
        r.backend = notes.get(ANNOTATION_BACKEND, "")
        r.agent_version = notes.get(ANNOTATION_VERSION, "")
        r.services = [s for s in str(notes.get(ANNOTATION_SERVICES, "")).split(",") if s]
        r.heartbeat, r.pace = notes.get(ANNOTATION_HEARTBEAT, ""), notes.get(ANNOTATION_HEARTBEAT_PACE, "")
        duration = spec.get("leaseDurationSeconds")
        r.lease_duration = float(duration) if isinstance(duration, int | float) and duration > 0 else None
        renewed = _parse_time(str(spec.get("renewTime") or ""))
        if renewed is not None:
            r.renewed_ago = max(0.0, (now - renewed).total_seconds())
    for obj in slices:
        vm = _label(obj, LABEL_VM)
        if not vm:
            continue
        r = row(vm)
        r.backend = r.backend or "endpointslice"
        _add_service(r, _label(obj, LABEL_SERVICE_NAME))
        for endpoint in obj.get("endpoints") or []:
            # An absent `ready` means ready (EndpointSlice API); the agent always writes it.
            _count(r, (endpoint.get("conditions") or {}).get("ready") is not False,
                   endpoint.get("addresses") or [])
    for obj in workloads:
        vm = _label(obj, LABEL_VM)
        if not vm:
            continue
        r = row(vm)
        kind = str(obj.get("kind", ""))
        r.backend = r.backend or kind.lower()
        _add_service(r, _label(obj, "app"))
        spec = obj.get("spec") or {}
        addresses = ([spec["address"]] if spec.get("address")
                     else [w.get("ip", "") for w in spec.get("workloadIPs", [])])
        condition = "Healthy" if kind == "WorkloadEntry" else "Ready"
        healthy = any(c.get("type") == condition and c.get("status") == "True"
                      for c in (obj.get("status") or {}).get("conditions") or [])
        _count(r, healthy, addresses)
    return [rows[vm] for vm in sorted(rows)]


def _label(obj: Body, key: str) -> str:
    return str((obj.get("metadata", {}).get("labels") or {}).get(key, ""))


def _add_service(r: VmRow, service: str) -> None:
    if service and service not in r.services:
        r.services.append(service)


def _count(r: VmRow, ready: bool, addresses: list[str]) -> None:
    if ready:
        r.ready += 1
    else:
        r.not_ready += 1
    r.addresses += [a for a in addresses if a and a not in r.addresses]


def _parse_time(text: str) -> datetime.datetime | None:
    """A MicroTime (2026-12-01T12:00:00.123456Z) or Time (…:00Z)."""
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(seconds: float | None) -> str:
    """kubectl's way: 45s, 3m, 2h, 5d."""
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 2 * 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def table(rows: list[VmRow], *, wide: bool = False) -> str:
    headers = ["VM", "IDENTITY", "MACHINE", "RENEWED", "HEARTBEAT", "BACKEND", "SERVICES", "ENDPOINTS"]
    if wide:
        headers += ["AGENT", "ADDRESSES", "HOLDER", "PACE"]
    lines = [headers]
    for r in rows:
        renewed = (age(r.renewed_ago) + (" ago" if r.renewed_ago is not None else "")
                   + (" STALE" if r.stale else ""))
        endpoints = f"{r.ready} ready" + (f", {r.not_ready} not ready" if r.not_ready else "")
        cells = [r.vm, r.identity, r.machine or "-", renewed, r.heartbeat or "-", r.backend or "-",
                 ",".join(r.services) or "-", endpoints]
        if wide:
            cells += [r.agent_version or "-", ",".join(r.addresses) or "-", r.holder or "-", r.pace or "-"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
