"""What other controllers add to the VM's own objects stays when the agent repairs them (real kube-apiserver):
labels, annotations, finalizers, owners. Only what the agent owns is put back."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

import pytest

from agent.cluster.kube import KubeClient
from agent.cluster.objects import object_name
from agent.config import ClusterSettings
from agent.lease.heartbeat import Heartbeat
from agent.logs import get_logger
from agent.state import Registration
from agent.sync.backends.backend import Backend
from agent.sync.backends.endpointslice import EndpointSliceBackend
from agent.sync.backends.workloadentry import WorkloadEntryBackend
from tests.integration.test_backends import WLE, fleet, istio_crds, settings  # noqa: F401 (fixtures)
from tests.testbed.cluster import Cluster

Body = dict[str, Any]

BACKENDS: dict[str, Callable[[KubeClient, str, str, Heartbeat], Backend]] = {
    "endpointslice": lambda kube, ns, vm, beat: EndpointSliceBackend(kube, ns, vm, beat.ensure, get_logger(vm=vm)),
    WLE: lambda kube, ns, vm, beat: WorkloadEntryBackend(kube, ns, vm, beat.ensure, get_logger(vm=vm)),
}
# An edit of what the agent owns, so that the next sync has to write the object.
EDIT = {"endpointslice": {"op": "replace", "path": "/endpoints/0/addresses/0", "value": "198.18.77.77"},
        WLE: {"op": "replace", "path": "/spec/address", "value": "198.18.77.77"}}


def address(obj: Body) -> str:
    return str(obj["endpoints"][0]["addresses"][0] if obj["kind"] == "EndpointSlice" else obj["spec"]["address"])


@pytest.mark.parametrize("kind", list(BACKENDS))
async def test_a_repair_keeps_other_controllers_labels_annotations_finalizers_and_owners(
    cluster: Cluster, namespace: str, settings: ClusterSettings, kind: str,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    if kind == WLE:
        request.getfixturevalue("istio_crds")
    name = object_name("mysqldb", "vm-a", 4)
    registration = Registration("mysqldb", 3306, "mysql", ip_address("198.18.9.1"))
    async with fleet(settings, namespace, ["vm-a"],
                     lambda kube, vm, beat: BACKENDS[kind](kube, namespace, vm, beat)) as [vm]:
        await vm.backend.sync([registration])
        svc = cluster.get("service", "mysqldb", namespace)
        assert svc is not None
        other_owner = {"apiVersion": "v1", "kind": "Service", "name": "mysqldb", "uid": svc["metadata"]["uid"]}
        cluster.kubectl("patch", kind, name, "-n", namespace, "--type=json", "-p", json.dumps([
            {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
            {"op": "add", "path": "/metadata/labels/team", "value": "db"},
            {"op": "add", "path": "/metadata/annotations", "value": {"example.com/note": "by hand"}},
            {"op": "add", "path": "/metadata/ownerReferences/-", "value": other_owner},
            EDIT[kind]]))
        try:
            await vm.backend.sync([registration])
            repaired = cluster.get(kind, name, namespace)
            assert repaired is not None
            assert address(repaired) == "198.18.9.1", "what the agent owns is put back"
            meta = repaired["metadata"]
            assert meta.get("finalizers") == ["example.com/keep"]
            assert meta["labels"]["team"] == "db"
            assert meta["labels"]["vmesh.dev/vm"] == "vm-a"
            assert meta["annotations"]["example.com/note"] == "by hand"
            assert other_owner["uid"] in [o["uid"] for o in meta["ownerReferences"]]
            # The agent's PUT leaves managedFields out (kube.replace); the apiserver keeps everyone's entries.
            shown = json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json",
                                               "--show-managed-fields").stdout)
            assert "kubectl-patch" in {m["manager"] for m in shown["metadata"].get("managedFields", [])}
            lease = cluster.get("lease", "vmesh-vm-a", namespace)
            assert lease is not None
            assert lease["metadata"]["uid"] in [o["uid"] for o in meta["ownerReferences"]]
            await vm.backend.sync([registration])
            again = cluster.get(kind, name, namespace)
            assert again is not None
            assert again["metadata"]["resourceVersion"] == meta["resourceVersion"], "others' fields are no change"
        finally:
            cluster.kubectl("patch", kind, name, "-n", namespace, "--type=json", "-p",
                            '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False)
