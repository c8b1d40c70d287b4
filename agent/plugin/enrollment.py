"""The enrollment policy: each VM bound by the apiserver to the addresses, services and token lifetime it was
enrolled for, and no VM publishing an address in the cluster's own Service or Pod ranges.

`kubectl vmesh enroll` records a VM's enrollment on its ServiceAccount (annotations); this module turns every
enrolled account of the cluster into one ValidatingAdmissionPolicy, `vmesh-vm-enrollment`, whose CEL holds
them as literals. Why literals and not a param object per VM: a ConfigMap paramKind can stop resolving for
good on a live apiserver (kubernetes#130887) or after a batch create (#133827), and a param selector
evaluates every selected param on every request; literals are compiled with the policy, need no informer,
and are looked up in one map, one bucket per last character of the VM name (a request builds its own bucket's
map only). The cost is one policy update per enroll/revoke, and a bound: CEL parses at most 100,000 characters
per expression (MAX_LITERAL), about 2,500 VMs with one CIDR and one service per bucket (36 buckets, a-z and
0-9; the policy object itself, at most 1.5 MB, holds about 15,000).

Pure: accounts in, manifests out. `agent/plugin/enforce.py` writes them and waits until they are enforced.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.cluster.objects import LABEL_MANAGED_BY, LABEL_VM, MANAGER

POLICY = "vmesh-vm-enrollment"
ANNOTATION_CIDRS = "vmesh.dev/enrolled-cidrs"
ANNOTATION_SERVICES = "vmesh.dev/enrolled-services"
ANNOTATION_LIFETIME = "vmesh.dev/token-lifetime"  # seconds
ANNOTATION_REFUSED = "vmesh.dev/refused-cidrs"  # on the policy: the cluster's Service and Pod ranges, kept
ANNOTATION_AUDIENCES = "vmesh.dev/api-audiences"  # on the policy: the apiserver's own token audiences
ANNOTATION_REVISION = "vmesh.dev/revision"
LABEL_MARKER = "vmesh.dev/policy-marker"  # an object labelled with a policy's name is refused by that policy
DEFAULT_LIFETIME = 30 * 86400  # enroll's --token-lifetime default; what a VM without a recorded one may ask
MAX_LITERAL = 90_000  # characters of one CEL literal; CEL's parser refuses expressions over 100,000
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Service name: a DNS-1035 label

Body = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Enrollment:
    """What one VM was enrolled for. Empty `cidrs` or `services`: any (outside the refused ranges)."""

    namespace: str
    vm: str
    cidrs: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    lifetime: int = DEFAULT_LIFETIME

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.vm}"

    @property
    def bound(self) -> bool:
        return bool(self.cidrs or self.services) or self.lifetime != DEFAULT_LIFETIME


def parse_cidr(text: str) -> Network:
    """`--cidr` as the admin wrote it (an address alone is its /32 or /128), or a clear ValueError."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"--cidr {text!r}: not an address range ({exc}); write e.g. 10.0.0.5/32 or "
                         "10.0.0.0/24") from exc
    first = network.network_address
    if (first.is_loopback or first.is_link_local or first.is_multicast
            or (first.is_unspecified and network.prefixlen)):
        raise ValueError(f"--cidr {text}: loopback, link-local, multicast and unspecified addresses are "
                         "never a VM's advertised address (the policy refuses them)")
    if network.prefixlen == 0:
        raise ValueError(f"--cidr {text}: every address; leave --cidr out to enroll the VM for any address")
    return network


def check_cidrs(cidrs: Iterable[str], refused: Iterable[str]) -> tuple[str, ...]:
    """The enrolled ranges, normalised, or a ValueError naming the cluster range one of them overlaps."""
    networks = [parse_cidr(c) for c in cidrs]
    for network in networks:
        for text in refused:
            other = ipaddress.ip_network(text)
            if network.version == other.version and network.overlaps(other):
                raise ValueError(f"--cidr {network} overlaps the cluster's Service/Pod range {other}: "
                                 "no VM address can be published there (the enrollment policy refuses it)")
    return tuple(str(n) for n in networks)


def check_services(services: Iterable[str]) -> tuple[str, ...]:
    names = tuple(services)
    for name in names:
        if not _SERVICE_NAME.match(name):
            raise ValueError(f"--service {name!r}: a Service name is a DNS-1035 label (lower-case letters, "
                             "digits and '-', starting with a letter)")
    return names


def of_account(account: Body) -> Enrollment | None:
    """A VM's enrollment from its ServiceAccount `vmesh-vm-<vm>`, or None for any other account."""
    meta = account.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    vm = str(labels.get(LABEL_VM, ""))
    if not vm or meta.get("name") != f"vmesh-vm-{vm}" or labels.get(LABEL_MANAGED_BY) != MANAGER:
        return None
    lifetime = str(notes.get(ANNOTATION_LIFETIME, ""))
    return Enrollment(namespace=str(meta.get("namespace", "")), vm=vm,
                      cidrs=tuple(c for c in str(notes.get(ANNOTATION_CIDRS, "")).split(",") if c),
                      services=tuple(s for s in str(notes.get(ANNOTATION_SERVICES, "")).split(",") if s),
                      lifetime=int(lifetime) if lifetime.isdigit() else DEFAULT_LIFETIME)


def account_annotations(cidrs: Sequence[str], services: Sequence[str], lifetime: int) -> dict[str, str]:
    """What `enroll` writes on the VM's account: read back by of_account() for the policy, and by people."""
    notes = {ANNOTATION_CIDRS: ",".join(cidrs), ANNOTATION_SERVICES: ",".join(services)}
    return {**{k: v for k, v in notes.items() if v}, ANNOTATION_LIFETIME: str(lifetime)}


def refused_of(policy: Body | None) -> tuple[str, ...]:
    """The refused ranges an existing enrollment policy carries
    (install's flags are kept by later enrolls)."""
    return _listed(policy, ANNOTATION_REFUSED)


def audiences_of(policy: Body | None) -> tuple[str, ...]:
    return _listed(policy, ANNOTATION_AUDIENCES)


def _listed(policy: Body | None, annotation: str) -> tuple[str, ...]:
    notes = ((policy or {}).get("metadata") or {}).get("annotations") or {}
    return tuple(c for c in str(notes.get(annotation, "")).split(",") if c)


def merge_ranges(*groups: Iterable[str]) -> tuple[str, ...]:
    """The ranges collapsed (one inside another counts once), IPv4 first, so the same ranges make the same
    policy."""
    networks = [ipaddress.ip_network(c.strip(), strict=False) for group in groups for c in group if c.strip()]
    v4 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv6Network))
    return tuple(str(n) for n in [*v4, *v6])


def _literal(value: Any) -> str:
    """A CEL literal: JSON's strings, ints, lists and maps are CEL's (every string here is validated)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _map_of(enrollments: Sequence[Enrollment], field: str) -> dict[str, Any]:
    default: Any = DEFAULT_LIFETIME if field == "lifetime" else ()
    return {e.key: list(v) if isinstance(v := getattr(e, field), tuple) else v
            for e in enrollments if getattr(e, field) != default}


_FIELDS = {"cidrs": ("enrolledCIDRs", "[]"), "services": ("enrolledServices", "[]"),
           "lifetime": ("lifetime", str(DEFAULT_LIFETIME))}


def build(enrollments: Iterable[Enrollment], refused: Sequence[str], audiences: Sequence[str]) -> list[Body]:
    """The policy and its binding, for every enrolled VM of the cluster. `audiences`: the apiserver's own
    (what a TokenRequest without audiences gets), the only ones a VM may ask for.

    The enrollments are split into buckets by the last character of the VM's name (a-z, 0-9), one map literal
    per bucket and field; a request builds only its own VM's bucket (variables are lazy), not a map of the
    whole fleet, and each bucket stays under CEL's expression limit on its own."""
    bound = sorted((e for e in enrollments if e.bound), key=lambda e: e.key)
    buckets: dict[str, list[Enrollment]] = {}
    for e in bound:
        buckets.setdefault(e.vm[-1], []).append(e)
    literals: dict[str, str] = {"refused": _literal(list(refused)), "audiences": _literal(list(audiences))}
    lookups: list[Body] = []
    for field, (name, default) in _FIELDS.items():
        chain = default
        for char, members in sorted(buckets.items(), reverse=True):
            found = _map_of(members, field)
            if not found:
                continue
            literals[f"{field}_{char}"] = text = _literal(found)
            if len(text) > MAX_LITERAL:
                raise ValueError(f"the enrollment policy's {field} of the VMs whose names end in {char!r} "
                                 f"would be {len(text):,} characters, over CEL's limit ({MAX_LITERAL:,}): "
                                 f"too many VMs enrolled with --cidr/--service ({len(members)} of them)")
            chain = (f"variables.bucket == '{char}' ? variables.{field}_{char}[?variables.key]"
                     f".orValue({default}) : {chain}")
        lookups.append({"name": name, "expression": chain})
    revision = hashlib.sha256(_literal([literals, lookups]).encode()).hexdigest()[:12]
    return [_policy(literals, lookups, refused, audiences, revision), _binding()]


def revision_of(policy: Body) -> str:
    return str(((policy.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REVISION, ""))


def _policy(literals: dict[str, str], lookups: list[Body], refused: Sequence[str], audiences: Sequence[str],
            revision: str) -> Body:
    rules = [("discovery.k8s.io", "endpointslices"), ("networking.istio.io", "workloadentries"),
             ("workload.linkerd.io", "externalworkloads"), ("", "services")]
    resource_rules = [{"apiGroups": [group], "apiVersions": ["*"], "resources": [res],
                       "operations": ["CREATE", "UPDATE"]} for group, res in rules]
    resource_rules.append({"apiGroups": [""], "apiVersions": ["*"], "resources": ["serviceaccounts/token"],
                           "operations": ["CREATE"]})
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY, "labels": {LABEL_MANAGED_BY: MANAGER},
                     "annotations": {ANNOTATION_REVISION: revision, ANNOTATION_REFUSED: ",".join(refused),
                                     ANNOTATION_AUDIENCES: ",".join(audiences)}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": resource_rules},
            "matchConditions": [{"name": "vm-account-or-marker", "expression": (
                "(request.userInfo.username.startsWith('system:serviceaccount:') && "
                "size(request.userInfo.username.split(':')) == 4 && "
                "request.userInfo.username.split(':')[3].startsWith('vmesh-vm-')) || "
                f"object.metadata.?labels[?'{LABEL_MARKER}'].orValue('') == '{POLICY}'")}],
            "variables": _VARIABLES + [{"name": name, "expression": text} for name, text in literals.items()]
                         + lookups,
            "validations": [
                {"expression": f"object.metadata.?labels[?'{LABEL_MARKER}'].orValue('') != '{POLICY}'",
                 "message": f"policy marker: {POLICY} revision {revision} is enforced",
                 "reason": "Forbidden"},
                *_VALIDATIONS],
        },
    }


def _binding() -> Body:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY, "labels": {LABEL_MANAGED_BY: MANAGER}},
            "spec": {"policyName": POLICY, "validationActions": ["Deny"]}}


# `groups`: the addresses an object publishes, one list per endpoint (an EndpointSlice's endpoints; a
# WorkloadEntry's address; an ExternalWorkload's workload IPs).
_VARIABLES: list[Body] = [
    {"name": "parts", "expression": "request.userInfo.username.split(':')"},
    {"name": "account", "expression": (
        "size(variables.parts) == 4 ? variables.parts[3] : request.userInfo.username")},
    {"name": "vm", "expression": (
        "variables.account.startsWith('vmesh-vm-') ? variables.account.substring(9) : ''")},
    {"name": "key", "expression": "request.namespace + '/' + variables.vm"},
    {"name": "bucket", "expression": (
        "size(variables.vm) == 0 ? '' : variables.vm.substring(size(variables.vm) - 1)")},
    {"name": "res", "expression": "request.resource.resource"},
    {"name": "groups", "expression": (
        "variables.res == 'endpointslices' ? object.?endpoints.orValue([]).map(e, e.addresses) : "
        "variables.res == 'workloadentries' ? [[object.spec.?address.orValue('')]] : "
        "variables.res == 'externalworkloads' ? object.spec.?workloadIPs.orValue([]).map(w, [w.ip]) : []")},
    {"name": "service", "expression": (
        "variables.res == 'services' ? object.metadata.name : "
        "variables.res == 'endpointslices' ? "
        "object.metadata.?labels[?'kubernetes.io/service-name'].orValue('') : "
        "object.metadata.?labels[?'app'].orValue('')")},
]

_VALIDATIONS: list[Body] = [
    {"expression": ("variables.groups.all(g, g.all(a, !isIP(a) || "
                    "!variables.refused.exists(c, cidr(c).containsIP(a))))"),
     "messageExpression": ("variables.account + ' may not publish ' + variables.groups.filter(g, g.exists(a, "
                           "isIP(a) && variables.refused.exists(c, cidr(c).containsIP(a)))).map(g, g[0])"
                           ".join(', ') + ': inside the cluster\\'s Service or Pod ranges (' + "
                           "variables.refused.join(', ') + ')'"),
     "reason": "Forbidden"},
    {"expression": ("size(variables.enrolledCIDRs) == 0 || variables.groups.all(g, g.all(a, isIP(a) && "
                    "variables.enrolledCIDRs.exists(c, cidr(c).containsIP(a))))"),
     "messageExpression": ("variables.account + "
                           "' may publish only addresses inside the CIDRs it was enrolled for ('"
                           " + variables.enrolledCIDRs.join(', ') + '), not ' + variables.groups.filter(g, "
                           "g.exists(a, !isIP(a) || !variables.enrolledCIDRs.exists(c, "
                           "cidr(c).containsIP(a)))).map(g, g[0]).join(', ')"),
     "reason": "Forbidden"},
    {"expression": ("variables.res == 'serviceaccounts' || size(variables.enrolledServices) == 0 || "
                    "variables.service in variables.enrolledServices"),
     "messageExpression": ("variables.account + ' was enrolled for the services ' + "
                           "variables.enrolledServices.join(', ') + ' only, not ' + variables.service + "
                           "' (' + variables.res + ' ' + object.metadata.name + ')'"),
     "reason": "Forbidden"},
    {"expression": ("variables.res != 'serviceaccounts' || "
                    "object.spec.?expirationSeconds.orValue(3600) <= variables.lifetime"),
     "messageExpression": ("variables.account + ' may request tokens lasting at most ' + "
                           "string(variables.lifetime) + ' s (its enrollment\\'s --token-lifetime), not ' + "
                           "string(object.spec.?expirationSeconds.orValue(3600)) + ' s'"),
     "reason": "Forbidden"},
    # The apiserver fills in its own audiences before admission when a request names none.
    {"expression": ("variables.res != 'serviceaccounts' || "
                    "object.spec.?audiences.orValue([]).all(a, a in variables.audiences)"),
     "messageExpression": ("variables.account + "
                           "' may request tokens only for the apiserver\\'s own audiences ('"
                           " + variables.audiences.join(', ') + '), not ' + "
                           "object.spec.?audiences.orValue([]).join(', ')"),
     "reason": "Forbidden"},
]
