"""Check settings that fit only some protocols, and checks that cannot be built: never a dead agent."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.mariadb import RATINGS_USER
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

HEALTHZ_SERVER = """
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", 8080), Handler)
print("up", flush=True)
server.serve_forever()
"""


@pytest.fixture
def web(make_vm: Callable[[str], VM]) -> Iterator[VM]:
    """A VM with an HTTP service on 8080 whose only healthy path is /healthz."""
    vm = make_vm("a")
    proc = subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", HEALTHZ_SERVER],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    try:
        yield vm
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def ready(cluster: Cluster, vm: VM, namespace: str, service: str) -> list[bool]:
    s = cluster.get("endpointslice", object_name(service, vm.name, 4), namespace)
    return [bool(e["conditions"].get("ready")) for e in (s or {}).get("endpoints") or []]


def test_an_auto_check_path_applies_to_http_and_not_to_mysql(
    cluster: Cluster, namespace: str, web: VM, mariadb_template: Path
) -> None:
    vm = web
    vm.start_mariadb(mariadb_template)
    config = vm.write_config(namespace, discovery={
        "allow": {"mysql": "mysqldb", "http": "web"}, "check": {"type": "auto", "path": "/healthz"}})
    checked = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    agent = vm.start_agent(config)
    wait_until(lambda: ready(cluster, vm, namespace, "web") == [True], 20, "web ready (GET /healthz passes)")
    wait_until(lambda: ready(cluster, vm, namespace, "mysqldb") == [True], 5, "mysqldb ready (its greeting)")
    assert agent.poll() is None


def test_a_check_that_cannot_be_built_fails_that_service_only(
    cluster: Cluster, namespace: str, web: VM, mariadb_template: Path
) -> None:
    """The credentials file is read when a check is built: one removed since the start fails mysqldb's check."""
    vm = web
    creds = vm.workdir / "mysql.toml"
    creds.write_text(f'user = "{RATINGS_USER[0]}"\npassword = "{RATINGS_USER[1]}"\n')
    creds.chmod(0o600)
    config = vm.write_config(namespace, discovery={
        "allow": {"mysql": "mysqldb", "http": "web"},
        "check": {"type": "auto", "path": "/healthz", "credentials_file": str(creds)}})
    agent = vm.start_agent(config)
    wait_until(lambda: ready(cluster, vm, namespace, "web") == [True], 20, "web ready")
    creds.unlink()
    vm.start_mariadb(mariadb_template)
    line = vm.wait_log(lambda line: str(line.get("event")).startswith("health check cannot run"), 10,
                       "the check refused")
    assert line["service"] == "mysqldb" and "cannot read credentials file" in line["error"], line
    wait_until(lambda: ready(cluster, vm, namespace, "mysqldb") == [False], 10, "mysqldb registered, not ready")
    assert ready(cluster, vm, namespace, "web") == [True]
    assert agent.poll() is None, "the agent died"
