"""Backend `endpoints`: legacy core v1 Endpoints, shaped like `istioctl register` made them.

A selector-less Service and an Endpoints object of the same name, shared by every VM of that service; subsets
grouped by port set; Istio's `alpha.istio.io/kubernetes-serviceaccounts` annotation on the Service when a
service account is configured. Unlike `istioctl register` it is safe with many writers:

- Ownership marker: each address entry this VM writes carries `targetRef` -> the VM's Lease (kind Lease, name
  `vmesh-<vm>`, uid). It sits on the entry itself, so it cannot drift from the address the way a separate
  annotation listing addresses could; it survives the EndpointSlice mirroring controller (which copies
  targetRef); and it names the exact Lease incarnation, so the addresses of a VM whose Lease is gone can be
  recognised. (`hostname` would also fit, but it means something to DNS for headless Services.) Istio and
  kube-proxy read targetRef only when its kind is Pod. An entry without the marker (e.g. written by
  `istioctl register` or by hand) belongs to somebody else and is never changed or removed.
- Every write goes through the conflict-safe write path (update.py): checked by resourceVersion, a 409
  re-reads and merges again after a short jittered pause, a bounded number of times
  (then the reconciler retries later).
- An IP is never added to a subset that already lists it (ready or not) under another owner.
- Not ready (failing checks, or terminating) -> the entry moves to `notReadyAddresses`.
- Dead VMs: the garbage collector cannot clean a shared object, so when `reap` is on, a sync also drops
  entries whose Lease (name and uid) no longer exists. Only entries seen before the Leases were listed are
  judged, so a VM that registered a moment ago is never taken for dead.
- remove_all removes only this VM's entries. An Endpoints object left empty is deleted if vmesh-agent created
  it (label app.kubernetes.io/managed-by), with a resourceVersion precondition so a concurrent registration
  cannot be lost; anybody else's stays. The Service always stays.

v1 Endpoints is deprecated since Kubernetes 1.33: the apiserver answers with a Warning header, which the
client ignores.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

import structlog

from agent.cluster.errors import ClusterError
from agent.cluster.kube import KubeClient
from agent.cluster.objects import (
    LABEL_MANAGED_BY,
    MANAGER,
    lease_name,
    named_ports,
    shared_metadata,
)
from agent.cluster.resources import ENDPOINTS, LEASES, Resource
from agent.state import Registration, group_by_service
from agent.sync.backends.backend import LeaseGetter
from agent.sync.failures import raise_failures
from agent.sync.services import SharedServices
from agent.sync.update import UPDATE_ATTEMPTS, Change, Delete, Put, update

Body = dict[str, Any]
Owner = tuple[str, str]  # (Lease name, Lease uid)
FIELDS = ("addresses", "notReadyAddresses")


class WantedAddress(NamedTuple):
    ip: str
    ports: list[Body]
    ready: bool


# --- Pure: what the subsets should hold ---------------------------------------------------------------------

def lease_reference(lease: Body) -> Body:
    """The ownership marker: an EndpointAddress.targetRef naming the VM's Lease."""
    meta = lease["metadata"]
    return {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "namespace": meta["namespace"],
            "name": meta["name"], "uid": meta["uid"]}


def address_owner(entry: Body) -> Owner | None:
    ref = entry.get("targetRef") or {}
    if ref.get("kind") != "Lease" or not ref.get("name"):
        return None
    return str(ref["name"]), str(ref.get("uid", ""))


def lease_owners(subsets: Iterable[Body] | None) -> set[Owner]:
    return {o for s in subsets or [] for f in FIELDS for e in s.get(f) or [] if (o := address_owner(e))}


def owned_addresses(subsets: Iterable[Body] | None, owner_name: str) -> dict[str, bool]:
    """IP -> ready, for the entries owned by the Lease `owner_name`."""
    owned: dict[str, bool] = {}
    for s in subsets or []:
        for field in FIELDS:
            for e in s.get(field) or []:
                if (address_owner(e) or ("", ""))[0] == owner_name:
                    owned[str(e.get("ip"))] = field == "addresses"
    return owned


def wanted_addresses(service: Body, registrations: Collection[Registration], *,
                     terminating: bool = False) -> list[WantedAddress]:
    """One entry per address: its ports named as the Service names them; ready only if every port is."""
    by_address: dict[str, list[Registration]] = {}
    for r in registrations:
        by_address.setdefault(str(r.address), []).append(r)
    return [
        WantedAddress(ip, named_ports(service, {(r.protocol, r.port) for r in regs}),
                      all(r.ready for r in regs) and not terminating)
        for ip, regs in sorted(by_address.items())
    ]


def _port_set(ports: Iterable[Body] | None) -> frozenset[tuple[str, int, str]]:
    return frozenset((p.get("name") or "", int(p.get("port", 0)), p.get("protocol") or "TCP")
                     for p in ports or [])


def canonical_subsets(subsets: Iterable[Body] | None) -> list[Body]:
    """Sorted, empty lists and empty subsets dropped: equal content compares equal."""
    result: list[Body] = []
    for s in subsets or []:
        body: Body = {"ports": sorted(s.get("ports") or [],
                                      key=lambda p: (p.get("port", 0), p.get("name") or ""))}
        for field in FIELDS:
            entries = sorted(s.get(field) or [], key=lambda e: str(e.get("ip", "")))
            if entries:
                body[field] = entries
        if any(f in body for f in FIELDS):
            result.append(body)
    return sorted(result, key=lambda s: sorted(_port_set(s["ports"])))


def merge_subsets(subsets: Iterable[Body] | None, owner: Body, wanted: Iterable[WantedAddress], *,
                  forget: Collection[Owner] = ()) -> tuple[list[Body], list[str]]:
    """The subsets with this VM's entries (targetRef names `owner`, its Lease) replaced by `wanted`, and the
    entries of dead VMs (`forget`: Lease name and uid) dropped; everybody else's entries stay untouched.

    An address goes into the subset whose port set equals its ports (a new subset if none), under `addresses`
    when ready, else under `notReadyAddresses`. An IP that subset already lists for another owner is not added
    again: such IPs are returned second.
    """
    forgotten = set(forget)

    def keep(entry: Body) -> bool:
        found = address_owner(entry)
        return found is None or (found[0] != owner["name"] and found not in forgotten)

    result: list[Body] = [
        {"ports": [dict(p) for p in s.get("ports") or []],
         **{f: [dict(e) for e in s.get(f) or [] if keep(e)] for f in FIELDS}}
        for s in subsets or []
    ]
    refused: list[str] = []
    for want in wanted:
        key = _port_set(want.ports)
        subset = next((s for s in result if _port_set(s["ports"]) == key), None)
        if subset is None:
            subset = {"ports": [dict(p) for p in want.ports], **{f: [] for f in FIELDS}}
            result.append(subset)
        if any(e.get("ip") == want.ip for f in FIELDS for e in subset[f]):
            refused.append(want.ip)
            continue
        subset["addresses" if want.ready else "notReadyAddresses"].append(
            {"ip": want.ip, "targetRef": dict(owner)})
    return canonical_subsets(result), refused


def build_endpoints(name: str, namespace: str, vm: str, subsets: list[Body]) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": shared_metadata(name, namespace, vm),
        "subsets": subsets,
    }


# --- The backend --------------------------------------------------------------------------------------------

class EndpointsBackend:
    owned_by_lease = False  # addresses in a shared Endpoints: only a reaper's remove_all takes them out
    def __init__(self, kube: KubeClient, namespace: str, vm: str, lease: LeaseGetter,
                 log: structlog.typing.FilteringBoundLogger, *, service_account: str = "", reap: bool = True,
                 attempts: int = UPDATE_ATTEMPTS) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._lease = lease  # the VM's Lease, the owner its objects name
        self._log = log
        self.service_account = service_account
        self.reap = reap
        self._attempts = attempts
        self._services = SharedServices(kube, namespace, vm, log)
        self._warned: set[tuple[str, str]] = set()
        # Endpoints name -> this VM's addresses there, as last synced
        self._mine: dict[str, dict[str, bool]] = {}

    @property
    def watched(self) -> tuple[Resource, str]:
        return ENDPOINTS, ""  # shared objects, some maybe made by hand: every Endpoints of the namespace

    def affected(self, kind: str, obj: Body) -> bool:
        """Shared by every VM of a service: only a change to this VM's own addresses needs its sync."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        have = {} if kind == "DELETED" else owned_addresses(obj.get("subsets"), lease_name(self.vm))
        return have != self._mine.get(name, {})

    async def sync(self, registrations: Collection[Registration], *, terminating: bool = False) -> None:
        lease = await self._lease()  # the marker names it, and it must exist before any entry does
        wanted: dict[str, list[WantedAddress]] = {}
        failures: dict[str, ClusterError] = {}
        for service, group in group_by_service(registrations).items():
            try:
                svc = await self._services.ensure(service, {(r.protocol, r.port) for r in group},
                                                  service_account=self.service_account)
            except ClusterError as exc:
                failures[service] = exc  # the others go ahead; this one's addresses stay as they are
                continue
            if svc.get("spec", {}).get("selector"):
                self._warn_once(service, "selector",
                                "service has a selector: Kubernetes' endpoints controller owns its Endpoints "
                                "and replaces this VM's addresses; use a selector-less Service")
            wanted[service] = wanted_addresses(svc, group, terminating=terminating)
        await self._write_all(lease_reference(lease), wanted, failures)

    async def mark_terminating(self, registrations: Collection[Registration]) -> None:
        await self.sync(registrations, terminating=True)

    async def remove_all(self, lease_uid: str = "") -> list[str]:
        # Entries are ours by Lease name; no Lease is needed (or created) to remove them. They are removed
        # before the Lease is (nobody else would), so `lease_uid` is never given here;
        # the name is the same anyway.
        return await self._write_all({"kind": "Lease", "name": lease_name(self.vm)}, {}, {}, reap=False)

    async def _write_all(self, owner: Body, wanted: dict[str, list[WantedAddress]],
                         failures: dict[str, ClusterError], *, reap: bool = True) -> list[str]:
        # Every Endpoints of the namespace: ours may sit in one that an admin created (`istioctl register`).
        items = {e["metadata"]["name"]: e for e in await self._kube.list(ENDPOINTS, self.namespace)}
        forget = await self._dead_owners(items.values(), owner["name"]) if reap and self.reap else set()
        touched = {name for name, e in items.items()
                   if owned_addresses(e.get("subsets"), owner["name"])
                   or lease_owners(e.get("subsets")) & forget}
        removed: list[str] = []
        for name in sorted((touched | wanted.keys()) - failures.keys()):
            try:
                removed += await self._update(name, items.get(name), owner, wanted.get(name, []), forget)
            except ClusterError as exc:
                failures[name] = exc
        raise_failures(failures)
        return removed

    async def _dead_owners(self, items: Iterable[Body], own: str) -> set[Owner]:
        """Lease (name, uid)s named by entries of other VMs that no longer exist. Judged only on entries read
        before the Leases are listed: their Lease existed before they did, so missing now means deleted."""
        others = {o for e in items for o in lease_owners(e.get("subsets")) if o[0] != own}
        if not others:
            return set()
        live = {(x["metadata"]["name"], x["metadata"]["uid"])
                for x in await self._kube.list(LEASES, self.namespace)}
        return others - live

    async def _update(self, name: str, current: Body | None, owner: Body, wanted: list[WantedAddress],
                      forget: set[Owner]) -> list[str]:
        """Read-modify-write one Endpoints through the conflict-safe write path: on 409 (or a concurrent
        create or delete) it is re-read and merged again. Returns what was removed (for remove_all)."""
        log = self._log.bind(service=name, object=f"endpoints/{name}")
        before: dict[str, bool] = {}
        gone: set[Owner] = set()

        def decide(found: Body | None) -> Change:
            nonlocal before, gone
            subsets = (found or {}).get("subsets") or []
            merged, refused = merge_subsets(subsets, owner, wanted, forget=forget)
            before, gone = owned_addresses(subsets, owner["name"]), lease_owners(subsets) & forget
            # what the cluster holds once this returns
            self._mine[name] = owned_addresses(merged, owner["name"])
            for ip in refused:
                self._warn_once(name, ip, "address already listed in this port set by another owner; "
                                "not added twice", address=ip)
            if found is None:
                return Put(build_endpoints(name, self.namespace, self.vm, merged)) if merged else None
            if merged == canonical_subsets(subsets):
                return None
            if not merged and (found["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER:
                return Delete()  # ours and empty: it goes (the version read only: a newcomer's address stays)
            return Put({**found, "apiVersion": "v1", "kind": "Endpoints", "subsets": merged})

        outcome = await update(self._kube, ENDPOINTS, self.namespace, name, decide, current=current,
                               attempts=self._attempts)
        after = self._mine.get(name, {})
        if outcome.verb == "deleted":
            log.info("endpoints deleted, no addresses left")
        elif outcome.verb != "unchanged" and before != after:
            log.info(f"endpoints {outcome.verb}", **_summary(before, after))
        if gone and outcome.verb != "unchanged":
            log.info("addresses of VMs whose Lease is gone removed", leases=sorted(n for n, _ in gone))
        removed = sorted(before.keys() - after.keys())
        return [f"endpoints/{name} ({', '.join(removed)})"] if removed else []

    def _warn_once(self, service: str, key: str, message: str, **fields: object) -> None:
        if (service, key) not in self._warned:
            self._warned.add((service, key))
            self._log.warning(message, service=service, object=f"endpoints/{service}", **fields)


def _summary(before: dict[str, bool], after: dict[str, bool]) -> dict[str, list[str]]:
    return {
        "ready": sorted(ip for ip, ready in after.items() if ready),
        "not_ready": sorted(ip for ip, ready in after.items() if not ready),
        "removed": sorted(before.keys() - after.keys()),
    }
