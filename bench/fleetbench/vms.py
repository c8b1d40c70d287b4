"""The fleet's VMs: fleet-<i> at 198.19.x.y, and the agent config each one runs. Standard library only: the
workers import it."""

from __future__ import annotations


def vm_name(index: int) -> str:
    return f"fleet-{index}"


def vm_address(index: int) -> str:
    return f"198.19.{index // 250}.{index % 250 + 1}"


# Rendered in two steps: the parent fills the fleet-wide values, each worker ${index} and ${address}. Only
# keys the previous release knows too, everything else at the agent's defaults.
CONFIG = """\
vm_name = "fleet-${index}"
namespace = "$namespace"
backend = "$backend"
state_dir = "$workdir/vm-${index}"

[cluster]
server = "$server"
ca_file = "$ca_file"
token_file = "$token_file"

[address]
address = "${address}"

[discovery]
enabled = false

[[service]]
name = "mysqldb"
port = 3306
protocol = "mysql"
check = { type = "tcp" }

[api]
socket = "$workdir/vm-${index}/agent.sock"
"""
