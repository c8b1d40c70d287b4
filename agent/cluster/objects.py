"""Pure builders of the objects the agent writes, and the names and labels that tie them together."""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection, Iterable
from typing import Any

from agent.state import Registration

MANAGER = "vmesh-agent"
LABEL_VM = "vmesh.dev/vm"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CREATED_BY = "vmesh.dev/created-by-vm"

# Istio reads the protocol from the port name's prefix; appProtocol says the same to everyone else.
_APP_PROTOCOL = {"mysql": "mysql", "postgres": "postgresql", "redis": "redis", "http": "http"}

Body = dict[str, Any]


def lease_name(vm: str) -> str:
    return f"vmesh-{vm}"


def slice_name(service: str, vm: str, family: int) -> str:
    return f"{service}-{vm}" if family == 4 else f"{service}-{vm}-v6"


def own_slices_selector(vm: str) -> str:
    return f"{LABEL_VM}={vm},{LABEL_SLICE_MANAGED_BY}={MANAGER}"


def port_name(protocol: str, port: int, taken: Collection[str] = ()) -> str:
    name = protocol if protocol in _APP_PROTOCOL else f"tcp-{port}"
    return name if name not in taken else f"{name}-{port}"


def service_port(protocol: str, port: int, taken: Collection[str] = ()) -> Body:
    body: Body = {"name": port_name(protocol, port, taken), "port": port, "targetPort": port, "protocol": "TCP"}
    if protocol in _APP_PROTOCOL:
        body["appProtocol"] = _APP_PROTOCOL[protocol]
    return body


def build_service(name: str, namespace: str, vm: str, ports: Iterable[tuple[str, int]]) -> Body:
    """A selector-less Service; its endpoints come from the VMs' EndpointSlices."""
    spec_ports: list[Body] = []
    for protocol, port in sorted(set(ports), key=lambda p: p[1]):
        spec_ports.append(service_port(protocol, port, {p["name"] for p in spec_ports}))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGER},
            "annotations": {ANNOTATION_CREATED_BY: vm},
        },
        "spec": {"type": "ClusterIP", "ports": spec_ports},
    }


def missing_service_ports(service: Body, ports: Iterable[tuple[str, int]]) -> list[Body]:
    """The ports a Service lacks (by number), named so they do not clash with the ones it has."""
    existing = service.get("spec", {}).get("ports") or []
    numbers = {p.get("port") for p in existing}
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
    names_by_port = {p.get("port"): p.get("name") for p in service.get("spec", {}).get("ports") or []}
    ports = sorted({(r.port, r.protocol) for r in registrations})
    slice_ports: list[Body] = []
    for port, protocol in ports:
        entry: Body = {"name": names_by_port.get(port) or port_name(protocol, port), "port": port, "protocol": "TCP"}
        if protocol in _APP_PROTOCOL:
            entry["appProtocol"] = _APP_PROTOCOL[protocol]
        slice_ports.append(entry)
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
            "name": slice_name(first.service, vm, first.family),
            "namespace": namespace,
            "labels": {
                LABEL_SERVICE_NAME: first.service,
                LABEL_SLICE_MANAGED_BY: MANAGER,
                LABEL_MANAGED_BY: MANAGER,
                LABEL_VM: vm,
            },
            "ownerReferences": [
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "name": lease["metadata"]["name"],
                    "uid": lease["metadata"]["uid"],
                }
            ],
        },
        "addressType": "IPv4" if first.family == 4 else "IPv6",
        "ports": slice_ports,
        "endpoints": endpoints,
    }


def slice_differs(current: Body, desired: Body) -> bool:
    """True when the fields the agent owns differ (labels it sets, owner, ports, endpoints)."""
    cur_meta, want_meta = current.get("metadata", {}), desired["metadata"]
    cur_labels = cur_meta.get("labels") or {}
    if any(cur_labels.get(k) != v for k, v in want_meta["labels"].items()):
        return True
    cur_owners = [o.get("uid") for o in cur_meta.get("ownerReferences") or []]
    if cur_owners != [o["uid"] for o in want_meta["ownerReferences"]]:
        return True
    if current.get("addressType") != desired["addressType"]:
        return True
    return _normalise(current.get("ports")) != _normalise(desired["ports"]) or \
        _normalise(current.get("endpoints")) != _normalise(desired["endpoints"])


def _normalise(items: Any) -> list[str]:
    return sorted(json.dumps(i, sort_keys=True) for i in items or [])


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with exactly six fractional digits, UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease(vm: str, namespace: str, duration_seconds: int, now: datetime.datetime) -> Body:
    stamp = micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(vm),
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_VM: vm},
        },
        "spec": {
            "holderIdentity": vm,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": stamp,
            "renewTime": stamp,
        },
    }
