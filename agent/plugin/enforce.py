"""Writing the admission policies and returning only once the apiserver enforces them.

An apiserver compiles a policy about a second after its informer sees it (each apiserver of a cluster on its
own), so a policy just written may not yet judge the next request: a VM's token handed out in that window is
not yet bound. `wait_enforced` does what Kubernetes' own integration tests do (kubernetes#132502): it writes a
marker object, as a dry run, until the policy refuses it, and a few times in a row (several apiservers behind
one address each have to have it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.cluster.errors import ClusterError, Conflict, Forbidden, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_VM, MANAGER
from agent.cluster.resources import (
    ADMISSION_POLICIES,
    ADMISSION_POLICY_BINDINGS,
    ALL_SERVICE_ACCOUNTS,
    ENDPOINT_SLICES,
    NODES,
    SERVICE_ACCOUNTS,
    SERVICE_CIDRS,
    SERVICES,
    Resource,
)
from agent.plugin import enrollment

FIELD_MANAGER = "kubectl-vmesh"
ENFORCE_TIMEOUT = 60.0  # seconds an apiserver may take to enforce a written policy
IN_A_ROW = 3  # refusals in a row that count as enforced
MARKER = "vmesh-policy-marker"
ATTEMPTS = 5  # rewrites of the enrollment policy when another enroll wrote it meanwhile

Body = dict[str, Any]


async def cluster_ranges(kube: KubeClient) -> tuple[str, ...]:
    """The cluster's Service ranges (ServiceCIDR objects, networking.k8s.io/v1 since Kubernetes 1.33), the Pod
    ranges its Nodes were given, and the `kubernetes` Service's own address, which any cluster has."""
    found: list[str] = []
    for item in await _items(kube, SERVICE_CIDRS):
        found += (item.get("spec") or {}).get("cidrs") or []
    for node in await _items(kube, NODES):
        spec = node.get("spec") or {}
        found += spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    try:
        service = await kube.get(SERVICES, "default", "kubernetes")
        found += [ip for ip in (service.get("spec") or {}).get("clusterIPs") or [] if ip and ip != "None"]
    except NotFound:
        pass
    return enrollment.merge_ranges(found)


async def _items(kube: KubeClient, resource: Resource) -> list[Body]:
    try:
        return await kube.list(resource, "")
    except NotFound:  # not served by this apiserver (ServiceCIDR before 1.33)
        return []


async def current_policy(kube: KubeClient, extra: Iterable[str] = ()) -> tuple[Body | None, tuple[str, ...]]:
    """The enrollment policy as it is now (None before the first write), and the ranges no VM may publish in:
    the ones it carries, the cluster's own, and `extra`."""
    try:
        current: Body | None = await kube.get(ADMISSION_POLICIES, "", enrollment.POLICY)
    except NotFound:
        current = None
    return current, enrollment.merge_ranges(enrollment.refused_of(current), await cluster_ranges(kube), extra)


async def api_audiences(kube: KubeClient, namespace: str, account: str) -> tuple[str, ...]:
    """The audiences the apiserver gives a token when none are asked for (its --api-audiences): read off a
    TokenRequest for `account`, whose 10-minute token is thrown away."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 600}}
    answer = await kube.create_subresource(SERVICE_ACCOUNTS, namespace, account, "token", request)
    audiences = tuple(str(a) for a in (answer.get("spec") or {}).get("audiences") or [])
    if not audiences:
        raise ClusterError(f"a TokenRequest for {namespace}/{account} came back without audiences")
    return audiences


async def publish(kube: KubeClient, namespace: str, account: str, refused: Iterable[str] = ()) -> str:
    """(Re)write vmesh-vm-enrollment from every enrolled account of the cluster; return its revision.
    `account` (in `namespace`) is one the apiserver's audiences can be learnt from if the policy has none yet.

    The accounts are read after the policy, and the policy is written only if unchanged since (its
    resourceVersion as the apply's precondition): two enrolls at once each end with a policy holding both."""
    extra = tuple(refused)
    for _ in range(ATTEMPTS):
        current, ranges = await current_policy(kube, extra)
        audiences = enrollment.audiences_of(current) or await api_audiences(kube, namespace, account)
        accounts = await kube.list(ALL_SERVICE_ACCOUNTS, "", f"{LABEL_VM},{LABEL_MANAGED_BY}={MANAGER}")
        policy, binding = enrollment.build(filter(None, map(enrollment.of_account, accounts)),
                                           ranges, audiences)
        if current is not None:
            policy["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            await kube.apply(ADMISSION_POLICIES, "", policy, field_manager=FIELD_MANAGER)
        except Conflict:
            continue
        await kube.apply(ADMISSION_POLICY_BINDINGS, "", binding, field_manager=FIELD_MANAGER)
        return enrollment.revision_of(policy)
    raise ClusterError(f"validatingadmissionpolicy/{enrollment.POLICY} kept changing while being written "
                       f"({ATTEMPTS} tries): other enrolls running? Run the command again")


def marker(policy: str) -> Body:
    """An EndpointSlice the named policy refuses, whoever writes it; never stored (written as a dry run)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": MARKER,
                         "labels": {enrollment.LABEL_MARKER: policy, LABEL_SERVICE_NAME: MARKER}},
            "addressType": "IPv4", "ports": [{"name": "marker", "port": 9, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.0.2.1"]}]}  # TEST-NET-1 (RFC 5737)


async def wait_enforced(kube: KubeClient, namespace: str, policy: str, revision: str = "", *,
                        timeout: float = ENFORCE_TIMEOUT,
                        clock: Callable[[], float] = time.monotonic) -> float:
    """Return the seconds it took until `policy` (at `revision`, when given) refused the marker IN_A_ROW times
    in a row; a ClusterError saying so after `timeout`."""
    expected = f"policy marker: {policy}" + (f" revision {revision}" if revision else "")
    start, in_a_row, last = clock(), 0, "not tried"
    while True:
        try:
            await kube.create(ENDPOINT_SLICES, namespace, marker(policy), dry_run=True)
            in_a_row, last = 0, "the marker was admitted"
        except Forbidden as exc:
            if expected in str(exc):
                in_a_row += 1
                if in_a_row == IN_A_ROW:
                    return clock() - start
                continue
            in_a_row, last = 0, str(exc)
        if clock() - start > timeout:
            raise ClusterError(
                f"validatingadmissionpolicy/{policy} is not enforced {timeout:g} s after it was written "
                f"(last: {last}); the apiserver needs admissionregistration.k8s.io/v1 (Kubernetes >= 1.30) "
                "and CEL's ip()/cidr() (>= 1.31). Until it is, VM tokens are not confined: see its status "
                "and the apiserver's log")
        await asyncio.sleep(0.2)
