"""The shipped manifests (packaging/kubernetes/*.yaml, package data here as `manifests/`),
moved to a namespace.

Pure: reading YAML and rewriting it; `install` in cli.py applies the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.cluster.resources import Resource

MANIFESTS = Path(__file__).resolve().parent / "manifests"
DEFAULT_NAMESPACE = "vm"  # what the files say; `-n` rewrites it
CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
})
# Keys whose value names a cluster-scoped object of the manifests (a binding's policy, a role reference).
_NAME_KEYS = frozenset({"name", "policyName"})

Body = dict[str, Any]


def manifest_files(directory: Path = MANIFESTS) -> list[Path]:
    """Every *.yaml of the manifests, in name order (the order `install` applies them in)."""
    return sorted(directory.glob("*.yaml"))


def load(namespace: str = DEFAULT_NAMESPACE, directory: Path = MANIFESTS) -> list[Body]:
    docs: list[Body] = []
    for path in manifest_files(directory):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return in_namespace(docs, namespace)


def in_namespace(docs: list[Body], namespace: str) -> list[Body]:
    """The manifests as they are for namespace `namespace`: every `namespace: vm`, the Namespace itself,
    the ServiceAccount user names (`system:serviceaccount:vm:…`) and namespace selectors on
    `kubernetes.io/metadata.name`. Cluster-scoped objects (the admission policy and its binding) get the
    namespace appended to their names outside the default namespace, so that installing into two
    namespaces makes two independent sets instead of one overwriting the other."""
    if namespace == DEFAULT_NAMESPACE:
        return docs
    renamed = {d["metadata"]["name"]: f"{d['metadata']['name']}-{namespace}" for d in docs
               if d.get("kind") in CLUSTER_SCOPED and d.get("kind") != "Namespace"}

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if not isinstance(value, str):
            return value
        if key in ("namespace", "kubernetes.io/metadata.name") and value == DEFAULT_NAMESPACE:
            return namespace
        if key in _NAME_KEYS and value in renamed:
            return renamed[value]
        return (value.replace(f"system:serviceaccount:{DEFAULT_NAMESPACE}:",
                              f"system:serviceaccount:{namespace}:")
                .replace(f"system:serviceaccounts:{DEFAULT_NAMESPACE}",
                         f"system:serviceaccounts:{namespace}"))

    moved: list[Body] = []
    for doc in docs:
        new = walk(doc)
        if doc.get("kind") == "Namespace":
            new["metadata"]["name"] = namespace
        moved.append(new)
    return moved


def resource_of(doc: Body) -> Resource:
    """Where a manifest's object lives in the REST API, from its apiVersion and kind."""
    group, _, version = str(doc["apiVersion"]).rpartition("/")
    kind = str(doc["kind"])
    return Resource(group, version, plural_of(kind), cluster_scoped=kind in CLUSTER_SCOPED)


def plural_of(kind: str) -> str:
    """The resource name the apiserver gives a kind (what discovery would say, for the kinds shipped here)."""
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    if lower.endswith("s"):
        return lower + "es"
    return lower + "s"


def describe(doc: Body) -> str:
    """How kubectl names an object in its output: `role.rbac.authorization.k8s.io/vmesh-agent`."""
    group = str(doc["apiVersion"]).rpartition("/")[0]
    kind = str(doc["kind"]).lower()
    return f"{kind}.{group}/{doc['metadata']['name']}" if group else f"{kind}/{doc['metadata']['name']}"


def dump(docs: list[Body]) -> str:
    return str(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True))
