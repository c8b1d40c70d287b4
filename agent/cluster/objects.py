"""Pure builders of the objects the agent writes, and the names and labels that tie them together."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from agent.discovery.addresses import IPAddress
from agent.protocols import app_protocol
from agent.state import Registration

MANAGER = "vmesh-agent"
LABEL_VM = "vmesh.dev/vm"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CREATED_BY = "vmesh.dev/created-by-vm"
# What the VM's Lease tells the fleet view (`kubectl vmesh get vms`).
ANNOTATION_HOLDER_MACHINE = "vmesh.dev/holder-machine"
ANNOTATION_AGENT_VERSION = "vmesh.dev/agent-version"
ANNOTATION_BACKEND = "vmesh.dev/backend"
ANNOTATION_SERVICES = "vmesh.dev/services"
ANNOTATION_HEARTBEAT = "vmesh.dev/heartbeat-interval"  # the renewal interval in force, e.g. "20s"
ANNOTATION_HEARTBEAT_PACE = "vmesh.dev/heartbeat-pace"  # why it is what it is (agent/lease/pace.py)
ANNOTATION_FLEET_SIZE = "vmesh.dev/fleet-size"  # on a reaper slot: the VMs' Leases its holder sees
MAX_NAME = 63  # a DNS label: what every kind of object accepts
NAME_HASH_CHARS = 10
# What the agent writes of its own objects besides metadata; everything else there is left as it is.
SLICE_CONTENT = ("addressType", "ports", "endpoints")
WORKLOAD_CONTENT = ("spec",)

# Istio reads the protocol from the port name's prefix; appProtocol says the same to everyone else.

Body = dict[str, Any]


def lease_name(vm: str) -> str:
    return f"vmesh-{vm}"


def object_name(service: str, vm: str, family: int) -> str:
    """The name of this VM's object (EndpointSlice, WorkloadEntry, ExternalWorkload)
    of one service and family.

    `<service>-<vm>[-v6]-<hash of (service, VM, family)>`, cut to 63 characters (a DNS label). The readable
    part alone is ambiguous (VM `a` serving `mysqldb-replica` and VM `replica-a` serving `mysqldb`), and
    whether it is depends on other VMs' names, which no agent knows; the hash makes it unique by construction.
    """
    digest = hashlib.sha256(f"{service}/{vm}/{family}".encode()).hexdigest()[:NAME_HASH_CHARS]
    readable = f"{service}-{vm}" if family == 4 else f"{service}-{vm}-v6"
    return f"{readable[:MAX_NAME - NAME_HASH_CHARS - 1].rstrip('-')}-{digest}"


def own_slices_selector(vm: str) -> str:
    return f"{LABEL_VM}={vm},{LABEL_SLICE_MANAGED_BY}={MANAGER}"


def port_name(protocol: str, port: int, taken: Collection[str] = ()) -> str:
    name = protocol if app_protocol(protocol) else f"tcp-{port}"
    return name if name not in taken else f"{name}-{port}"


def service_port(protocol: str, port: int, taken: Collection[str] = ()) -> Body:
    body: Body = {"name": port_name(protocol, port, taken), "port": port, "targetPort": port,
                  "protocol": "TCP"}
    if app_protocol(protocol):
        body["appProtocol"] = app_protocol(protocol)
    return body


def build_service(name: str, namespace: str, vm: str, ports: Iterable[tuple[str, int]]) -> Body:
    """A selector-less Service; its endpoints come from the VMs' EndpointSlices.

    PreferDualStack: on a dual-stack cluster the Service gets both families, so the VMs' IPv4 slices are used
    even where IPv6 is the cluster's primary family (SingleStack, the default, would take the primary only and
    ignore them); a single-stack cluster gives it its one family, as before."""
    spec_ports: list[Body] = []
    for protocol, port in sorted(set(ports), key=lambda p: p[1]):
        spec_ports.append(service_port(protocol, port, {p["name"] for p in spec_ports}))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": shared_metadata(name, namespace, vm),
        "spec": {"type": "ClusterIP", "ipFamilyPolicy": "PreferDualStack", "ports": spec_ports},
    }


def shared_metadata(name: str, namespace: str, vm: str) -> Body:
    """Metadata of an object many VMs share (Service, legacy Endpoints): ours, and which VM made it."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": {LABEL_MANAGED_BY: MANAGER},
        "annotations": {ANNOTATION_CREATED_BY: vm},
    }


def _target(port: Body) -> object:
    """A Service port's targetPort: the VM port it stands for (a name, for a pod's named port, is no VM's)."""
    target = port.get("targetPort")
    return target if isinstance(target, int) else port.get("port")


def missing_service_ports(service: Body, ports: Iterable[tuple[str, int]]) -> list[Body]:
    """The ports a Service lacks, named so they do not clash with the ones it has. A VM port is there when a
    Service port has its number, or has it as targetPort: an admin's remap (port 3306, targetPort 3307 after
    MariaDB moved to 3307) keeps clients of 3306 served, and no port 3307 is added (issue 20)."""
    existing = service.get("spec", {}).get("ports") or []
    numbers = {p.get("port") for p in existing} | {_target(p) for p in existing}
    taken = {p.get("name", "") for p in existing}
    missing: list[Body] = []
    for protocol, port in sorted(set(ports), key=lambda p: p[1]):
        if port not in numbers:
            body = service_port(protocol, port, taken)
            taken.add(body["name"])
            numbers.add(port)
            missing.append(body)
    return missing


def build_endpoint_slice(
    service: Body, vm: str, namespace: str, registrations: Collection[Registration], lease: Body,
    *, terminating: bool = False,
) -> Body:
    """The slice of one VM, service and address family; port names follow the Service's."""
    first = next(iter(registrations))
    slice_ports = named_ports(service, {(r.protocol, r.port) for r in registrations})
    by_address: dict[str, bool] = {}
    for r in registrations:
        by_address[str(r.address)] = by_address.get(str(r.address), True) and r.ready
    endpoints = [
        {
            "addresses": [address],
            "conditions": {
                "ready": ready and not terminating,
                "serving": ready,
                "terminating": terminating,
            },
        }
        for address, ready in sorted(by_address.items())
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": object_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {
                LABEL_SERVICE_NAME: first.service,
                LABEL_SLICE_MANAGED_BY: MANAGER,
                LABEL_MANAGED_BY: MANAGER,
                LABEL_VM: vm,
            },
            "ownerReferences": [lease_owner_reference(lease)],
        },
        "addressType": "IPv4" if first.family == 4 else "IPv6",
        "ports": slice_ports,
        "endpoints": endpoints,
    }


def owned_differs(current: Body, desired: Body, content: Collection[str]) -> bool:
    """True when what the agent owns of its object differs: its labels and annotations, its Lease owner
    reference, and the `content` fields. Server fields and what others added are not compared."""
    cur_meta, want_meta = current.get("metadata", {}), desired["metadata"]
    for key in ("labels", "annotations"):
        have = cur_meta.get(key) or {}
        if any(have.get(k) != v for k, v in (want_meta.get(key) or {}).items()):
            return True
    cur_owners = [o.get("uid") for o in cur_meta.get("ownerReferences") or [] if _is_lease_reference(o)]
    if cur_owners != [o["uid"] for o in want_meta.get("ownerReferences") or []]:
        return True
    return any(_normalise(current.get(f)) != _normalise(desired.get(f)) for f in content)


def merge_owned(current: Body, desired: Body, content: Collection[str]) -> Body:
    """`current` with what the agent owns set as `desired` has it: its labels and annotations merged over
    others', its Lease reference in place of the old one (other owners kept), the `content` fields.
    Finalizers, others' labels and annotations, and the status stay as they are."""
    cur, want = current["metadata"], desired["metadata"]
    owners = [o for o in cur.get("ownerReferences") or [] if not _is_lease_reference(o)]
    metadata = {
        **cur,
        "labels": {**(cur.get("labels") or {}), **(want.get("labels") or {})},
        "annotations": {**(cur.get("annotations") or {}), **(want.get("annotations") or {})},
        "ownerReferences": [*owners, *(want.get("ownerReferences") or [])],
    }
    return {**current, "metadata": metadata, **{f: desired[f] for f in content if f in desired}}


def _is_lease_reference(owner: Body) -> bool:
    return (owner.get("kind") == "Lease"
            and str(owner.get("apiVersion", "")).startswith("coordination.k8s.io/"))


def _normalise(value: Any) -> Any:
    """Lists compare as sets of their entries (the server keeps order, but the agent does not rely on it)."""
    if isinstance(value, list):
        return sorted(json.dumps(i, sort_keys=True) for i in value)
    return json.dumps(value, sort_keys=True)


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with exactly six fractional digits, UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease(vm: str, namespace: str, duration_seconds: int, now: datetime.datetime, *, holder: str = "",
                annotations: dict[str, str] | None = None) -> Body:
    """The VM's heartbeat Lease, held by `holder` (agent.lease.identity: VM, machine, boot and process)."""
    body = lease_body(lease_name(vm), namespace, holder or vm, duration_seconds, now,
                      labels={LABEL_MANAGED_BY: MANAGER, LABEL_VM: vm})
    if annotations:
        body["metadata"]["annotations"] = dict(annotations)
    return body


def lease_annotations(machine: str, version: str, backend: str, services: Iterable[str], *,
                      interval: float | None = None, pace: str = "") -> dict[str, str]:
    """The fleet view's facts about a VM, as its Lease carries them."""
    notes = {ANNOTATION_HOLDER_MACHINE: machine, ANNOTATION_AGENT_VERSION: version,
             ANNOTATION_BACKEND: backend, ANNOTATION_SERVICES: ",".join(sorted(set(services)))}
    if interval is not None:
        notes |= {ANNOTATION_HEARTBEAT: f"{interval:.3g}s", ANNOTATION_HEARTBEAT_PACE: pace}
    return notes


def with_annotations(obj: Body, annotations: dict[str, str]) -> bool:
    """Set `annotations` on `obj` in place, keeping the others it has; whether anything changed."""
    current = obj.setdefault("metadata", {}).get("annotations") or {}
    if all(current.get(k) == v for k, v in annotations.items()):
        return False
    obj["metadata"]["annotations"] = {**current, **annotations}
    return True


def lease_body(name: str, namespace: str, holder: str, duration_seconds: int, now: datetime.datetime, *,
               labels: dict[str, str]) -> Body:
    """A coordination.k8s.io Lease just acquired by `holder`."""
    stamp = micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": stamp,
            "renewTime": stamp,
        },
    }


# --- The other backends: legacy Endpoints, Istio WorkloadEntry, Linkerd ExternalWorkload --------------------

LABEL_APP = "app"
# Istio reads the Kubernetes service accounts allowed to serve a Service from here (comma-separated).
ANNOTATION_ISTIO_SERVICE_ACCOUNTS = "alpha.istio.io/kubernetes-serviceaccounts"
# Without it Istio ignores a WorkloadEntry's Healthy condition and treats the entry as always healthy.
ANNOTATION_ISTIO_HEALTH_CHECKS = "proxy.istio.io/health-checks-enabled"
CONDITION_HEALTHY = "Healthy"  # Istio WorkloadEntry
CONDITION_READY = "Ready"  # Linkerd ExternalWorkload
REASON_PASSING = "HealthCheckPassing"
REASON_FAILING = "HealthCheckFailing"
REASON_TERMINATING = "Terminating"


def own_objects_selector(vm: str) -> str:
    """The objects one VM owns alone (WorkloadEntries, ExternalWorkloads)."""
    return f"{LABEL_VM}={vm},{LABEL_MANAGED_BY}={MANAGER}"


def lease_owner_reference(lease: Body) -> Body:
    """Deleting the VM's Lease (shutdown, or a peer reaping a dead VM) garbage-collects what points here."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "name": lease["metadata"]["name"],
        "uid": lease["metadata"]["uid"],
    }


def build_service_with(name: str, namespace: str, vm: str, ports: Iterable[tuple[str, int]], *,
                       selector: dict[str, str] | None = None, service_account: str = "") -> Body:
    """build_service, plus a selector (mesh backends) or Istio's service-account annotation (endpoints)."""
    body = build_service(name, namespace, vm, ports)
    if selector:
        body["spec"]["selector"] = dict(selector)
    if service_account:
        body["metadata"]["annotations"][ANNOTATION_ISTIO_SERVICE_ACCOUNTS] = service_account
    return body


def extend_service(service: Body, ports: Iterable[tuple[str, int]], *, selector: dict[str, str] | None = None,
                   service_account: str = "") -> tuple[Body, list[str]]:
    """A copy of a shared Service with what this VM needs added,
    and the names of the additions (none: leave it).

    Only ever adds: missing ports, this VM's service account to Istio's list, and the selector, the latter
    only to a selector-less Service that vmesh-agent created (someone else's selector is theirs to choose).
    """
    updated: Body = copy.deepcopy(service)
    spec = updated.setdefault("spec", {})
    metadata = updated.setdefault("metadata", {})
    changes: list[str] = []
    missing = missing_service_ports(service, ports)
    if missing:
        spec["ports"] = [*(spec.get("ports") or []), *missing]
        changes.append("ports " + ",".join(p["name"] for p in missing))
    if service_account:
        annotations = metadata.get("annotations") or {}
        accounts = [a.strip() for a in str(annotations.get(ANNOTATION_ISTIO_SERVICE_ACCOUNTS, "")).split(",")]
        accounts = [a for a in accounts if a]
        if service_account not in accounts:
            annotations[ANNOTATION_ISTIO_SERVICE_ACCOUNTS] = ",".join([*accounts, service_account])
            metadata["annotations"] = annotations
            changes.append(f"service account {service_account}")
    if selector and not spec.get("selector") and (
            metadata.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER:
        spec["selector"] = dict(selector)
        changes.append("selector " + ",".join(f"{k}={v}" for k, v in sorted(selector.items())))
    return updated, changes


def named_ports(service: Body, ports: Iterable[tuple[str, int]]) -> list[Body]:
    """{name, port, protocol, appProtocol} per port, named as the Service names it: consumers match a Service
    port to an endpoint's port by name (Endpoints, Istio's WorkloadEntry port map)."""
    existing = service.get("spec", {}).get("ports") or []
    # By targetPort first (a selector-less Service port stands for the VM port it targets: an admin's remap),
    # then by number.
    by_number = {p.get("port"): p.get("name") or "" for p in existing}
    remapped_last = sorted(existing, key=lambda p: _target(p) != p.get("port"))  # the admin's remap wins
    by_target = {_target(p): p.get("name") or "" for p in remapped_last}
    wanted = sorted(set(ports), key=lambda p: (p[1], p[0]))
    # A name goes to one port only (the apiserver refuses a slice that repeats one): the port its Service port
    # targets keeps it, a port matched by number only gives it up (3306 still listening, or vanished and kept
    # not ready, while the remap 3306 -> 3307 names 3307 `mysql`) and gets one of its own.
    targeted = {by_target[port] for _, port in wanted if port in by_target}
    used = {p.get("name") or "" for p in existing}
    result: list[Body] = []
    seen: set[int] = set()
    for protocol, port in wanted:
        if port in seen:
            continue
        seen.add(port)
        if port in by_target:
            name = by_target[port]
        elif port in by_number and by_number[port] not in targeted:
            name = by_number[port]
        else:
            name = port_name(protocol, port, used)
            used.add(name)
        entry: Body = {"name": name, "port": port, "protocol": "TCP"}
        if app_protocol(protocol):
            entry["appProtocol"] = app_protocol(protocol)
        result.append(entry)
    return result


def one_address(registrations: Collection[Registration],
                preferred: Sequence[IPAddress] = ()) -> tuple[str, list[Registration]]:
    """WorkloadEntry and ExternalWorkload carry one address per family. When a service listens on several
    addresses of one family (listeners bound to specific addresses), the one the agent advertises: the first
    of `preferred` (the advertised address, then the candidates in `hostname -I` order) it listens on; the
    lowest only when none of them is (no preference known: `deregister`, a reaper)."""
    listening = {r.address for r in registrations}
    address = next((a for a in preferred if a in listening), None) or \
        min(listening, key=lambda a: (a.version, int(a)))
    return str(address), [r for r in registrations if r.address == address]


def build_workload_entry(service: Body, vm: str, namespace: str, registrations: Collection[Registration],
                         lease: Body, *, service_account: str = "", network: str = "",
                         preferred: Sequence[IPAddress] = ()) -> Body:
    """Istio WorkloadEntry of one VM, service and family; the Service selects it by spec.labels `app`."""
    first = min(registrations)
    address, regs = one_address(registrations, preferred)
    labels = {LABEL_APP: first.service, LABEL_VM: vm}
    spec: Body = {
        "address": address,
        "ports": {p["name"]: p["port"] for p in named_ports(service, {(r.protocol, r.port) for r in regs})},
        "labels": labels,
    }
    if service_account:
        spec["serviceAccount"] = service_account
    if network:
        spec["network"] = network
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": object_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {**labels, LABEL_MANAGED_BY: MANAGER},
            "annotations": {ANNOTATION_ISTIO_HEALTH_CHECKS: "true"},
            "ownerReferences": [lease_owner_reference(lease)],
        },
        "spec": spec,
    }


def build_external_workload(service: Body, vm: str, namespace: str, registrations: Collection[Registration],
                            lease: Body, *, identity: str, server_name: str,
                            preferred: Sequence[IPAddress] = ()) -> Body:
    """Linkerd ExternalWorkload of one VM, service and family (Linkerd takes one workload IP); the Service
    selects it by the metadata label `app`."""
    first = min(registrations)
    address, regs = one_address(registrations, preferred)
    return {
        "apiVersion": "workload.linkerd.io/v1beta1",
        "kind": "ExternalWorkload",
        "metadata": {
            "name": object_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {LABEL_APP: first.service, LABEL_VM: vm, LABEL_MANAGED_BY: MANAGER},
            "ownerReferences": [lease_owner_reference(lease)],
        },
        "spec": {
            "meshTLS": {"identity": identity, "serverName": server_name},
            "ports": [{"name": p["name"], "port": p["port"], "protocol": "TCP"}
                      for p in named_ports(service, {(r.protocol, r.port) for r in regs})],
            "workloadIPs": [{"ip": address}],
        },
    }


def health_of(registrations: Collection[Registration], vm: str, *,
              terminating: bool = False) -> tuple[bool, str, str]:
    """(healthy, reason, message) of one VM's workload, for a status condition."""
    if terminating:
        return False, REASON_TERMINATING, f"vmesh-agent on {vm} is deregistering it"
    failing = sorted({(r.port, r.protocol) for r in registrations if not r.ready})
    if not failing:
        return True, REASON_PASSING, f"health checks pass on {vm}"
    return (False, REASON_FAILING,
            f"health checks fail on {vm}: " + ", ".join(f"{p}/{proto}" for p, proto in failing))


def condition_time(moment: datetime.datetime) -> str:
    """metav1.Time: RFC 3339, seconds, UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[Body] | None, kind: str, *, healthy: bool, reason: str, message: str,
                  now: datetime.datetime) -> list[Body] | None:
    """`conditions` with the one of type `kind` set, or None when it already says exactly this. Other types
    are kept; lastTransitionTime moves only when the status flips."""
    status = "True" if healthy else "False"
    existing = [dict(c) for c in conditions or []]
    current = next((c for c in existing if c.get("type") == kind), None)
    if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            status, reason, message):
        return None
    same_status = (current is not None and current.get("status") == status
                   and current.get("lastTransitionTime"))
    condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": current["lastTransitionTime"] if current and same_status
                              else condition_time(now),
    }
    if current is None:
        return [*existing, condition]
    return [condition if c is current else c for c in existing]
