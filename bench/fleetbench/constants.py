"""The bench's fixed figures: names in the cluster, the addresses, the agent's defaults it counts on, the
targets and the timings. Standard library only: the workers and the listener import it too."""

from __future__ import annotations

POLICIES = ("vmesh-vm-isolation", "vmesh-legacy-no-tokens", "vmesh-vm-enrollment")
TOKEN_LIFETIME_S = 7200  # the enrolled VMs' --token-lifetime: longer than any run
CLUSTER_DIR = "/tmp/vmesh-bench-cluster"  # not the test suite's /tmp/vmesh-testcluster: outages stop it
# The namespace's own address on the bridge: tests/testbed/vm.py hands out 198.18.1.0-198.18.254.255 and the
# gateway lives in 198.18.0.x, so 198.18.255.x is nobody else's.
NETNS_ADDRESS = "198.18.255.{}"
# The VMs' addresses: local inside the bench's namespace only (a `local` route on lo), outside the bridge's
# /16.
VM_NET = "198.19.0.0/16"

SERVICE = "mysqldb"
SERVICE_PORT = 3306
HEARTBEAT_S = 5.0  # the agent's defaults, which the config leaves alone
LEASE_RATIO = 3  # heartbeat.lease_duration / heartbeat.interval at the defaults
PACE_AIM = 0.9  # agent/lease/pace.py AIM: the fleet is paced to this share of its write budget
LONGEST_LEASE_S = 300
BUDGET_SETTLE_S = 240.0  # the paced Leases must carry their duration this long after the spawn at most
GRACE_S = 5.0
SLOT_PREFIX = "vmesh-reaper-"
SLOT_RENEWALS_PER_S = 0.2  # per slot Lease (issue 9)
MANAGED = "app.kubernetes.io/managed-by=vmesh-agent"
SLICES_MANAGED = "endpointslice.kubernetes.io/managed-by=vmesh-agent"

TARGET_SPAWN_S = 30.0
TARGET_WRITES = 0.2 * 1.1
TARGET_RENEWAL_TOLERANCE = 0.10
TARGET_READS = 0.05
TARGET_WATCH_EVENTS = 1.5
TARGET_RECOVERY_S = 5.0
REAP_SLACK_S = 5.0
REAP_CAP_S = 180.0  # give up on the reap (and on a slot takeover) this long after the kill

POLL_S = 0.5
READS = ("GET", "LIST")
WRITES = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY")
AGENT_RESOURCES = ("leases", "endpointslices", "services", "endpoints")
WORKER_START_S = 600.0
WORKER_STOP_S = 60.0
STOP_CLEAN_S = 30.0  # after the workers exit, the garbage collector's time to remove what the Leases owned
WORKER_LIFETIME_S = 6 * 3600.0  # a worker whose parent vanished stops on its own
