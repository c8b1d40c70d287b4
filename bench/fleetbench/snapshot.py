"""What the cluster holds for the fleet at one moment (Leases, slots, slices, ready addresses), and whether
that is exactly one ready endpoint per VM."""

from __future__ import annotations

import collections
import http.client
from dataclasses import dataclass, field

from .admin import Admin, leases_path, slices_path
from .constants import SERVICE, SLICES_MANAGED, SLOT_PREFIX


@dataclass
class Slot:
    holder: str
    duration: int


@dataclass
class Snapshot:
    """What the cluster holds for the fleet, at one moment."""

    leases: dict[str, str] = field(default_factory=dict)  # vm -> Lease uid
    lease_durations: dict[str, int] = field(default_factory=dict)
    slots: dict[str, Slot] = field(default_factory=dict)  # vmesh-reaper-<k> -> holder
    slices: dict[str, str] = field(default_factory=dict)  # vm -> EndpointSlice uid (endpointslice backend)
    ready: list[str] = field(default_factory=list)  # every ready endpoint address, duplicates kept


def take_snapshot(admin: Admin, ns: str, backend: str) -> Snapshot:
    snap = Snapshot()
    leases, _ = admin.list(leases_path(ns))
    for lease in leases:
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        name = str(meta.get("name", ""))
        if name.startswith(SLOT_PREFIX):
            holder = str(spec.get("holderIdentity") or "").split("/")[0]  # <vm>/<machine>/<boot>/<pid>
            snap.slots[name] = Slot(holder, int(spec.get("leaseDurationSeconds") or 0))
        elif vm := (meta.get("labels") or {}).get("vmesh.dev/vm"):
            snap.leases[vm] = str(meta.get("uid", ""))
            snap.lease_durations[vm] = int(spec.get("leaseDurationSeconds") or 0)
    if backend == "endpoints":
        endpoints = admin.json(f"/api/v1/namespaces/{ns}/endpoints/{SERVICE}") or {}
        snap.ready = [a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or []]
        return snap
    slices, _ = admin.list(slices_path(ns), SLICES_MANAGED)
    for item in slices:
        meta = item.get("metadata") or {}
        if vm := (meta.get("labels") or {}).get("vmesh.dev/vm"):
            snap.slices[vm] = str(meta.get("uid", ""))
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                snap.ready += endpoint.get("addresses") or []
    return snap


def try_snapshot(admin: Admin, ns: str, backend: str) -> Snapshot | None:
    try:
        return take_snapshot(admin, ns, backend)
    except (OSError, http.client.HTTPException, ValueError):
        return None  # the apiserver is down or failing: not correct, try again


def endpoint_problems(snap: Snapshot, expected: dict[str, str], backend: str) -> list[str]:
    """Why the cluster is not exactly one ready endpoint per expected VM (empty: correct)."""
    counts = collections.Counter(snap.ready)
    problems = [f"{vm}: {counts[address]} ready endpoints for {address}"
                for vm, address in expected.items() if counts[address] != 1]
    if backend != "endpoints":
        problems += [f"{vm}: no EndpointSlice" for vm in expected if vm not in snap.slices]
    return problems
