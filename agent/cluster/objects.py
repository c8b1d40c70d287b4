"""The names and labels that tie the agent's objects together, and the pure builders of the shared ones
(the Lease, the Service); each backend's own builders sit beside it in agent/sync/backends/."""

from __future__ import annotations

import copy
import datetime
import hashlib
from collections.abc import Collection, Iterable
from typing import Any

from agent.protocols import app_protocol

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


# --- The Service as the backends extend it (a selector, Istio's service accounts), and their port names -----

# Istio reads the Kubernetes service accounts allowed to serve a Service from here (comma-separated).
ANNOTATION_ISTIO_SERVICE_ACCOUNTS = "alpha.istio.io/kubernetes-serviceaccounts"


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
