"""Tokens and passwords never appear in the agent's logs or views, even at debug level and on errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.cluster.objects import object_name
from tests.testbed.cluster import Cluster
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

# An admin who pasted the password into both fields: MariaDB's refusal names the user, i.e. the password.
PASSWORD = "Pa55-in-both-fields-7r1x"


def test_no_token_or_password_in_logs(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    creds = vm.workdir / "mysql.toml"
    creds.write_text(f'user = "{PASSWORD}"\npassword = "{PASSWORD}"\n')
    creds.chmod(0o600)
    token = cluster.token(namespace, vm=vm.name)
    config = vm.write_config(namespace, token, discovery={"check": {"type": "mysql", "credentials_file": str(creds)}})
    vm.start_agent(config)
    wait_until(lambda: cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace), 20, "registration")
    # The login is refused with a message that carries the password: it is logged and shown, masked.
    failing = vm.wait_log(lambda line: line.get("event") == "health check failing", 10, "the refused login")
    assert failing["output"].startswith("1045: Access denied for user '***'@"), failing
    views = [vm.cli(*args).stdout for args in (("services", "--json"), ("services",), ("status",))]
    assert "Access denied for user '***'@" in views[0]
    # An expired/garbage token: the cluster answers 401 and the agent says so, without echoing it.
    (vm.workdir / "token").write_text(token[:-10] + "AAAAAAAAAA")
    vm.wait_log(lambda line: "the cluster refuses it" in f"{line.get('event', '')} {line.get('error', '')}", 20,
                "the 401 reported")
    assert vm.stop_agent() in (0, 1)
    text = vm.agent_log.read_text()
    assert token not in text and token.split(".")[1] not in text
    for shown in (text, *views):
        assert PASSWORD not in shown
