"""34 malformed configs: each is one line naming the key (and its line), exit 78, nothing written to the cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.testbed.cluster import Cluster
from tests.testbed.vm import AGENT, VM

# (name, how to break a valid config, the key the error must name)
CASES: list[tuple[str, Callable[[str, Path], str], str]] = [
    ("bad toml", lambda c, d: c + "\nthis is = = not toml\n", ""),
    ("unknown top key", lambda c, d: "namespce = \"x\"\n" + c, "namespce"),
    ("unknown table key", lambda c, d: c.replace("[heartbeat]", "[heartbeat]\nintervall = \"1s\""),
     "heartbeat.intervall"),
    ("unknown table", lambda c, d: c + "\n[heartbeats]\ninterval = \"1s\"\n", "heartbeats"),
    ("duration without unit", lambda c, d: c.replace('interval = "1s"', 'interval = "1"', 1), "discovery.interval"),
    ("duration as number", lambda c, d: c.replace('lease_duration = "5s"', "lease_duration = 5"),
     "heartbeat.lease_duration"),
    ("negative duration", lambda c, d: c.replace('resync_interval = "2s"', 'resync_interval = "-2s"'),
     "sync.resync_interval"),
    ("lease shorter than interval", lambda c, d: c.replace('lease_duration = "5s"', 'lease_duration = "500ms"'),
     "heartbeat.lease_duration"),
    ("namespace wrong type", lambda c, d: c.replace('namespace = "', "namespace = 5\n#", 1), "namespace"),
    ("namespace invalid", lambda c, d: c.replace('namespace = "', 'namespace = "Bad_NS"\n#', 1), "namespace"),
    ("vm name invalid", lambda c, d: c.replace('vm_name = "', 'vm_name = "VM A"\n#', 1), "vm_name"),
    ("unknown backend", lambda c, d: 'backend = "consul"\n' + c, "backend"),
    ("missing token file", lambda c, d: c.replace(str(d / "token"), str(d / "missing-token")),
     "cluster.token_file"),
    ("missing ca file", lambda c, d: c.replace('ca_file = "', f'ca_file = "{d}/nope.crt"\n#', 1), "cluster.ca_file"),
    ("http server", lambda c, d: c.replace('server = "https://', 'server = "http://', 1), "cluster.server"),
    ("no server", lambda c, d: c.replace('server = "', "#", 1), "cluster.server"),
    ("kubeconfig and server", lambda c, d: c.replace("[cluster]", f'[cluster]\nkubeconfig = "{d / "token"}"'),
     "cluster.kubeconfig"),
    ("bad address", lambda c, d: c + '\n[address]\naddress = "10.0.0.300"\n', "address.address"),
    ("bad cidr", lambda c, d: c + '\n[address]\ncidr = "10.0.0.0/33"\n', "address.cidr"),
    ("allow unknown protocol", lambda c, d: c.replace("[discovery]", '[discovery]\nallow = { mongo = "db" }'),
     "discovery.allow.mongo"),
    ("allow bad service name", lambda c, d: c.replace("[discovery]", '[discovery]\nallow = { mysql = "My_DB" }'),
     "discovery.allow.mysql"),
    ("service without port", lambda c, d: c + '\n[[service]]\nname = "db"\n', "service[0].port"),
    ("service port out of range", lambda c, d: c + '\n[[service]]\nname = "db"\nport = 70000\n', "service[0].port"),
    ("service port as string", lambda c, d: c + '\n[[service]]\nname = "db"\nport = "3306"\n', "service[0].port"),
    ("service unknown protocol", lambda c, d: c + '\n[[service]]\nname = "db"\nport = 1\nprotocol = "smtp"\n',
     "service[0].protocol"),
    ("check unknown type", lambda c, d: c + '\n[[service]]\nname = "db"\nport = 1\ncheck = { type = "ping" }\n',
     "service[0].check.type"),
    ("exec check without command", lambda c, d: c + '\n[[service]]\nname = "db"\nport = 1\ncheck = { type = "exec" }\n',
     "service[0].check.command"),
    ("world-readable credentials", lambda c, d: c.replace("[discovery]",
     f'[discovery]\ncheck = {{ type = "mysql", credentials_file = "{d / "creds.toml"}" }}'),
     "discovery.check.credentials_file"),
    ("service name starting with a digit",
     lambda c, d: c.replace("[discovery]", '[discovery]\nallow = { mysql = "3db" }'),
     "discovery.allow.mysql"),
    ("http path on a mysql service's check", lambda c, d: c + '\n[[service]]\nname = "db"\nport = 3306\n'
     'protocol = "mysql"\ncheck = { path = "/healthz" }\n', "service[0].check.path"),
    ("bad log format", lambda c, d: c.replace('format = "json"', 'format = "xml"'), "log.format"),
    ("bad externalworkload template", lambda c, d: c + '\n[externalworkload]\nidentity = "spiffe://{host}"\n',
     "externalworkload.identity"),
    ("metrics listener host not an address", lambda c, d: c + '\n[metrics]\nlisten = "prometheus:9464"\n',
     "metrics.listen"),
    ("metrics listener IPv6 without brackets", lambda c, d: c + '\n[metrics]\nlisten = ":::9464"\n',
     "metrics.listen"),
]


def test_there_are_thirty_four() -> None:
    assert len(CASES) == 34


@pytest.mark.parametrize(("name", "breaks", "key"), CASES, ids=[c[0] for c in CASES])
def test_malformed_config(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], *, name: str,
    breaks: Callable[[str, Path], str], key: str,
) -> None:
    vm = make_vm("a")
    good = vm.write_config(namespace)
    creds = vm.workdir / "creds.toml"
    creds.write_text('user = "ratings"\npassword = "ratings-pass"\n')
    creds.chmod(0o644)
    good.write_text(breaks(good.read_text(), vm.workdir))

    check = subprocess.run([sys.executable, "-m", "agent", "check-config", str(good)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 78, check.stdout
    run = vm.exec(*AGENT, "run", "--config", str(good), check=False)
    assert run.returncode == 78
    for output in (check.stderr, run.stderr):
        lines = output.strip().splitlines()
        assert len(lines) == 1, f"{name}: expected one line, got {lines}"
        assert lines[0].startswith(f"vmesh-agent: config {good}: ")
        if key:
            assert lines[0].startswith(f"vmesh-agent: config {good}: {key}: "), lines[0]
            assert lines[0].count(f"{key}:") == 1, lines[0]
        if key and name != "no server":  # a key that is absent has no line to point at
            assert "(line " in lines[0], lines[0]
    assert "ratings-pass" not in check.stderr
    assert cluster.list("lease", namespace) == []
    assert cluster.list("endpointslice", namespace) == []
    assert cluster.list("service", namespace) == []
