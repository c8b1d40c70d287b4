"""Fixtures for the real test bed: control plane (session), a namespace per test, simulated VMs."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed.cluster import TESTCLUSTER, Cluster
from tests.testbed.lock import testbed_lock
from tests.testbed.mariadb import make_template
from tests.testbed.plugin import kubectl_vmesh
from tests.testbed.vm import VM


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the integration tests need root (network namespaces, MariaDB per VM); run them as root")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The markers follow the fixtures, so they cannot be forgotten or left on a test that no longer needs them:
    `cluster` on every test that starts the test control plane, `vm` on every one that makes a VM (network
    namespaces, root). `-m "not cluster"` then runs exactly the tests that need no control plane."""
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        if "cluster" in needs:
            item.add_marker(pytest.mark.cluster)
        if "make_vm" in needs:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    _need_root()
    with testbed_lock("pytest"):  # from the first test that needs the cluster until the session ends
        c = Cluster.up()
        # Every VM of the suite runs under the shipped admission policies as `kubectl vmesh install` writes them,
        # the cluster's own ranges refused (the test node's Pod range given as the flag, since no Node exists yet).
        kubectl_vmesh(c, "install", "--pod-cidr", "10.244.0.0/16")
        yield c
        if not os.environ.get("VMESH_KEEP_CLUSTER"):
            subprocess.run([str(TESTCLUSTER), "down"], check=False)


@pytest.fixture(scope="session")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_root()
    return make_template(tmp_path_factory.mktemp("mariadb"))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace()
    cluster.apply_rbac(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def make_vm(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[[str], VM]]:
    made: list[VM] = []

    def make(label: str) -> VM:
        vm = VM(f"{label}-{uuid.uuid4().hex[:4]}", tmp_path, cluster)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.destroy()
    # The agent runs unchanged under the admission policies: no write of it is ever refused by them.
    refused = [f"{vm.name}: {line}" for vm in made if vm.agent_log.exists()
               for line in vm.agent_log.read_text(errors="replace").splitlines()
               if "vmesh-vm-isolation" in line or "vmesh-vm-enrollment" in line]
    assert not refused, "an admission policy refused an agent's write:\n" + "\n".join(refused[:5])
