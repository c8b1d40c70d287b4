"""Per-VM tokens against the real control plane: the agent renews its own token before it expires and keeps
registering across rotations; a revoked one is one line and health critical within a heartbeat, with no retry
storm; the shared legacy token keeps working with a warning; another VM's token is refused at start, and a good
one put in its place is picked up.

The VMs' ServiceAccounts are made here as `kubectl vmesh enroll` makes them (vmesh-vm-<vm>, bound to the Role),
with the apiserver's shortest token life (10 min) and a renewal at 5 % of it (30 s).

A VM whose clock is off (issue 20): the agent runs under Debian's libfaketime, its wall clock ahead or behind and
its monotonic clock untouched, on a bundle `kubectl vmesh enroll` wrote and `tar -xzf` unpacked. The TokenRequests
are counted by the apiserver itself (apiserver_request_total for serviceaccounts/token)."""

from __future__ import annotations

import calendar
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cluster.objects import ANNOTATION_SERVICES, object_name
from agent.cluster.tokens import parse_claims
from tests.testbed.clock import certificates_age, clocks_under, skewed_clock
from tests.testbed.cluster import Cluster
from tests.testbed.plugin import bundle_paths, kubectl_vmesh, untar_bundle
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

FRACTION = 0.05  # of a 600 s token: renewed every 30 s


def enroll(cluster: Cluster, namespace: str, vm_name: str, duration: str = "10m") -> str:
    """The VM's own ServiceAccount, bound to the shared Role, and a bound token of it."""
    account = f"vmesh-vm-{vm_name}"
    cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    cluster.kubectl("create", "rolebinding", account, "-n", namespace, "--role", "vmesh-agent",
                    "--serviceaccount", f"{namespace}:{account}")
    return cluster.kubectl("create", "token", account, "-n", namespace, "--duration", duration).stdout.strip()


def whoami(cluster: Cluster, token: str) -> str:
    """The account the apiserver takes `token` for ("" when it refuses it)."""
    result = cluster.kubectl("--token", token, "auth", "whoami", "-o", "json", check=False)
    if result.returncode != 0:
        return ""
    return str(json.loads(result.stdout)["status"]["userInfo"]["username"])


def status(vm: VM) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(vm.cli("status", "--json").stdout)
    return body


def addresses(cluster: Cluster, namespace: str, vm: VM) -> list[str]:
    s = cluster.get("endpointslice", object_name("mysqldb", vm.name, 4), namespace)
    return sorted(a for e in (s or {}).get("endpoints") or [] for a in e["addresses"])


def lines_with(vm: VM, text: str) -> list[dict[str, Any]]:
    return [line for line in vm.log_lines() if text in str(line.get("event", ""))]


def test_the_agent_renews_its_token_before_expiry_and_keeps_registering_across_two_rotations(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    enrolled = enroll(cluster, namespace, vm.name)
    vm.start_agent(vm.write_config(namespace, enrolled, cluster={"token_renew_fraction": FRACTION}))
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert lease is not None
    assert lease["metadata"]["annotations"][ANNOTATION_SERVICES] == "mysqldb"
    assert lease["metadata"]["annotations"]["vmesh.dev/backend"] == "endpointslice"
    renewed_file = vm.workdir / "state" / "token"
    account = f"system:serviceaccount:{namespace}:vmesh-vm-{vm.name}"

    seen = [enrolled]
    for rotation in (1, 2):
        started = time.monotonic()
        token = wait_until(lambda: renewed_file.exists() and (t := renewed_file.read_text().strip()) not in seen
                           and t, 60, f"rotation {rotation}")
        print(f"rotation {rotation} after {time.monotonic() - started:.1f}s")
        assert stat.S_IMODE(os.stat(renewed_file).st_mode) == 0o600
        claims, previous = parse_claims(token), parse_claims(seen[-1])
        assert claims is not None and previous is not None
        assert claims.subject == account and claims.audiences == previous.audiences
        assert claims.lifetime == previous.lifetime == 600
        assert claims.issued_at < previous.expires_at, "renewed before the old one expired"
        assert whoami(cluster, token) == account, "the renewed token is valid"
        seen.append(token)

    # Still registering, and on the renewed token: the Lease keeps renewing, health passing.
    before = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert before is not None
    wait_until(lambda: (cluster.get("lease", f"vmesh-{vm.name}", namespace) or {}).get("spec", {}).get("renewTime")
               != before["spec"]["renewTime"], 5, "the Lease renewed after two rotations")
    assert addresses(cluster, namespace, vm) == [vm.address]
    body = status(vm)
    assert body["health"] == "passing", body["health_reasons"]
    assert body["credentials"]["kind"] == "own" and body["credentials"]["account"] == account
    assert body["credentials"]["token_file"] == str(renewed_file)
    assert body["credentials"]["renewals"] >= 2
    assert not lines_with(vm, "legacy")


def test_a_revoked_vm_says_so_in_one_line_and_is_critical_within_one_heartbeat_without_a_retry_storm(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    token = enroll(cluster, namespace, vm.name)
    vm.start_agent(vm.write_config(namespace, token))
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    wait_until(lambda: status(vm)["health"] == "passing", 10, "passing")

    cluster.kubectl("delete", "serviceaccount", f"vmesh-vm-{vm.name}", "-n", namespace)
    deleted = time.monotonic()
    # The apiserver keeps a token it accepted in its authentication cache for 10 s: from then on it refuses it.
    wait_until(lambda: whoami(cluster, token) == "", 20, "the apiserver refusing the token", interval=0.1)
    refused_at = time.monotonic()
    body = wait_until(lambda: (b := status(vm))["health"] == "critical" and b, 5, "critical")
    took = time.monotonic() - refused_at
    print(f"apiserver refused the token {refused_at - deleted:.2f}s after the ServiceAccount was deleted; "
          f"the agent critical {took:.2f}s after that (heartbeat every 1 s)")
    assert took < 2.0, "within one heartbeat (1 s) and its request"
    reason = "token was revoked or its ServiceAccount deleted"
    assert any(reason in r and f"kubectl vmesh enroll {vm.name}" in r for r in body["health_reasons"])
    refused = body["credentials"]["refused_requests"]

    time.sleep(10)  # ten heartbeats, ten syncs, watches restarting
    body = status(vm)
    assert body["health"] == "critical", body
    assert body["credentials"]["refused_requests"] <= refused + 1, "no retry storm: the apiserver is left alone"
    # One line says it; the loops that failed because of it name it as their error, once each.
    said = [line for line in vm.log_lines() if str(line.get("event", "")).startswith(reason)]
    assert len(said) == 1 and said[0]["level"] == "error", said
    assert vm.agent is not None and vm.agent.poll() is None, "still running, saying why"


def test_the_shared_legacy_token_keeps_working_with_one_warning(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    vm.start_agent(vm.write_config(namespace, cluster.token(namespace, shared=True)))
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    wait_until(lambda: status(vm)["health"] == "passing", 10, "passing")
    warnings = lines_with(vm, "uses the shared legacy token")
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "warning"
    assert f"re-enroll with `kubectl vmesh enroll {vm.name}`" in warnings[0]["event"]
    assert status(vm)["credentials"]["kind"] == "legacy"
    assert not (vm.workdir / "state" / "token").exists(), "the shared token is not renewed"


def test_another_vms_token_is_refused_at_start_and_its_own_put_in_place_is_picked_up(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    vm = make_vm("a")
    vm.start_mariadb(mariadb_template)
    other = f"b-{vm.name}"
    vm.start_agent(vm.write_config(namespace, enroll(cluster, namespace, other)))
    line = vm.wait_log(lambda entry: "not registering" in str(entry.get("event", "")), 20, "the refusal")
    assert f"VM {other}'s" in line["event"] and f"this agent is VM {vm.name}" in line["event"], line
    body = wait_until(lambda: (b := status(vm))["health"] == "critical" and b, 10, "critical")
    assert any(f"VM {other}'s" in r for r in body["health_reasons"])
    time.sleep(3)
    assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is None, "nothing registered"
    assert cluster.list("endpointslice", namespace, f"vmesh.dev/vm={vm.name}") == []

    (vm.workdir / "token").write_text(enroll(cluster, namespace, vm.name))  # the admin installs the right one
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered with its own token")
    wait_until(lambda: status(vm)["health"] == "passing", 10, "passing")
    assert len(lines_with(vm, f"VM {other}'s")) == 1


def test_a_kubeconfig_exec_plugins_token_is_fetched_again_when_the_cluster_refuses_it(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path
) -> None:
    """Issue 20: a kubeconfig's credentials were read once at start, so an exec plugin's short-lived token
    (`aws eks get-token`, ~15 min) ended in 401 for good. Here the plugin mints a token of the VM's account from
    the test cluster at each call; the account is then deleted and made again, which the apiserver's cache turns
    into 401 for the token in use within ~10 s. The agent runs the plugin again and keeps renewing its Lease."""
    vm = make_vm("exec")
    vm.start_mariadb(mariadb_template)
    account = f"vmesh-vm-{vm.name}"
    enroll(cluster, namespace, vm.name)
    calls = vm.workdir / "plugin-calls"
    plugin = vm.workdir / "get-token"
    env = cluster.env
    plugin.write_text(
        "#!/bin/sh\n"
        f"echo call >> {calls}\n"
        f"token=$({env['BIN']}/kubectl --kubeconfig {cluster.kubeconfig} --server {cluster.url_from_vms} "
        f"create token {account} -n {namespace} --duration 10m) || exit 1\n"
        "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
        "\"status\":{\"token\":\"%s\"}}' \"$token\"\n")
    plugin.chmod(0o755)
    kubeconfig = vm.workdir / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": cluster.url_from_vms,
                                               "certificate-authority": cluster.ca_file}}],
        "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                  "command": str(plugin), "interactiveMode": "Never"}}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    config = vm.write_config(namespace, token="unused")
    text = "\n".join(line for line in config.read_text().splitlines()
                     if not line.startswith(("server = ", "ca_file = ", "token_file = ")))
    config.write_text(text.replace("[cluster]", f'[cluster]\nkubeconfig = "{kubeconfig}"', 1) + "\n")
    vm.start_agent(config)
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    at_start = calls.read_text().count("call")  # once per connection the agent opens (two)
    time.sleep(2)
    assert calls.read_text().count("call") == at_start, "run again though nothing was refused"

    cluster.kubectl("delete", "serviceaccount", account, "-n", namespace)
    cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    wait_until(lambda: calls.read_text().count("call") > at_start, 30, "the plugin run again after a 401",
               interval=0.2)
    refreshed = time.monotonic()

    def renewed_since(moment: float) -> bool:
        ago = status(vm)["last_heartbeat"]["seconds_ago"]
        return ago is not None and ago < time.monotonic() - moment

    wait_until(lambda: renewed_since(refreshed), 10, "the Lease renewed with the new token")
    assert addresses(cluster, namespace, vm) == [vm.address]
    assert status(vm)["health"] != "critical", status(vm)


# -- a VM whose clock is off (issue 20) -----------------------------------------------------------------------------

SKEW_WARNING = "the VM's clock is off from the apiserver's"


def token_requests(cluster: Cluster) -> int:
    """TokenRequests the apiserver has served since it started, whatever their outcome: its own counter."""
    total = 0.0
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if (line.startswith("apiserver_request_total{") and 'resource="serviceaccounts"' in line
                and 'subresource="token"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def enrolled_bundle(cluster: Cluster, namespace: str, vm: VM, where: Path, lifetime: str) -> tuple[Path, str]:
    """`kubectl vmesh enroll VM --token-lifetime LIFETIME -o X.tar.gz`, unpacked by `tar -xzf` as the README says:
    the directory (the VM's /etc/vmesh-agent) and the token."""
    bundle = where / f"{vm.name}.tar.gz"
    kubectl_vmesh(cluster, "enroll", vm.name, "-n", namespace, "-o", str(bundle), "--server", cluster.url_from_vms,
                  "--token-lifetime", lifetime)
    etc = untar_bundle(vm, bundle)
    return etc, (etc / "token").read_text().strip()


def from_utc(text: str) -> float:
    """The agent's "2026-12-31 09:15:00 UTC" (agent.cluster.tokens.utc) back to seconds."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S UTC")))


def test_a_vm_clock_50_min_ahead_of_its_1h_token_costs_one_early_renewal_not_a_storm(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, tmp_path: Path
) -> None:
    """Before: renewal was due at iat + 0.8 x lifetime on the VM's clock; 50 min ahead, every new 1 h token was
    already due and the loop renewed without sleeping (1,014 TokenRequests in 2 s). Now the enrolled token,
    placed by its iat, is renewed at once, and the renewal is due 48 min after it arrived (monotonic)."""
    vm = make_vm("ahead")
    vm.start_mariadb(mariadb_template)
    etc, enrolled = enrolled_bundle(cluster, namespace, vm, tmp_path, "1h")
    config = vm.write_config(namespace, enrolled, cluster=bundle_paths(etc))
    # iat has whole seconds, and of two tokens with the same iat the agent takes the enrolled one: a renewal in the
    # second the bundle's token was minted would not be taken as current, and be renewed again 10 s later.
    claims = parse_claims(enrolled)
    assert claims is not None
    time.sleep(max(0.0, claims.issued_at + 1.1 - time.time()))
    skew = skewed_clock("+50m")
    wall, monotonic = clocks_under(skew)
    assert abs(wall - 3000) < 5 and abs(monotonic) < 5, f"faketime: wall {wall:+.1f}s, monotonic {monotonic:+.1f}s"
    account = f"system:serviceaccount:{namespace}:vmesh-vm-{vm.name}"

    before = token_requests(cluster)
    vm.start_agent(config, wrap=skew)
    started = time.monotonic()
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    time.sleep(max(0.0, started + 30 - time.monotonic()))  # three times the least interval between two renewals
    served = token_requests(cluster) - before
    renewed = lines_with(vm, "token renewed")
    print(f"{served} TokenRequest(s) in {time.monotonic() - started:.0f}s with the VM's clock 50 min ahead")
    assert served == 1, f"{served} TokenRequests: one early renewal, then none for 48 min"
    assert len(renewed) == 1, renewed
    # The agent's clock is the faked one: the token it received is 50 min older than its clock says.
    warning = vm.wait_log(lambda line: str(line.get("event", "")).startswith(SKEW_WARNING), 1, "the skew warning")
    assert warning["level"] == "warning" and warning["ahead"] is True, warning
    assert abs(warning["seconds"] - 3000) < 60, warning
    body = status(vm)
    assert body["health"] == "passing", body["health_reasons"]
    credentials = body["credentials"]
    assert credentials["renewals"] == 1 and credentials["kind"] == "own" and credentials["account"] == account
    assert credentials["token_file"] == str(vm.workdir / "state" / "token")
    assert whoami(cluster, (vm.workdir / "state" / "token").read_text().strip()) == account
    # The next renewal is 0.8 x 1 h after the token arrived, on the VM's clock as the status shows it.
    ahead = from_utc(credentials["next_renewal"]) - (time.time() + wall)
    assert 47 * 60 < ahead <= 48 * 60 + 1, f"next renewal in {ahead:.0f}s"
    assert addresses(cluster, namespace, vm) == [vm.address]
    lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert lease is not None
    wait_until(lambda: (cluster.get("lease", f"vmesh-{vm.name}", namespace) or {}).get("spec", {}).get("renewTime")
               != lease["spec"]["renewTime"], 5, "the Lease still renewing")
    assert vm.agent is not None and vm.agent.poll() is None


def test_a_vm_clock_behind_renews_its_token_by_the_time_since_it_arrived_before_it_expires(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, tmp_path: Path
) -> None:
    """Before: with the VM's clock behind by more than (1 - fraction) x lifetime, the renewal came after the token
    had expired. Here a 10 min token renewed at 5 % of its life (30 s), the clock 10 min behind: the renewal was due
    10 min 30 s after the token was minted, when it had expired; now 30 s after first sight and every 30 s after.

    The agent checks the apiserver's certificate against its own clock: a clock further behind than the test
    cluster's certificates are old sees them not yet valid. On a cluster started moments ago the clock is put
    less far behind (at least 2 min, still far past where each renewal is due)."""
    age = certificates_age(cluster.ca_file)
    if age < 180:
        time.sleep(180 - age)
        age = 180.0
    behind = int(min(600.0, age - 60))
    vm = make_vm("behind")
    vm.start_mariadb(mariadb_template)
    etc, enrolled = enrolled_bundle(cluster, namespace, vm, tmp_path, "10m")
    config = vm.write_config(namespace, enrolled, cluster={**bundle_paths(etc), "token_renew_fraction": FRACTION})
    skew = skewed_clock(f"-{behind}s")
    wall, monotonic = clocks_under(skew)
    assert abs(wall + behind) < 5 and abs(monotonic) < 5, f"faketime: wall {wall:+.1f}s, monotonic {monotonic:+.1f}s"
    account = f"system:serviceaccount:{namespace}:vmesh-vm-{vm.name}"

    before = token_requests(cluster)
    vm.start_agent(config, wrap=skew)
    started = time.monotonic()
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    wait_until(lambda: status(vm)["credentials"]["renewals"] >= 1, 45, "the first renewal", interval=0.2)
    first = time.monotonic()
    warning = vm.wait_log(lambda line: str(line.get("event", "")).startswith(SKEW_WARNING), 5, "the skew warning")
    assert warning["ahead"] is False and abs(warning["seconds"] + behind) < 60, warning
    wait_until(lambda: status(vm)["credentials"]["renewals"] >= 2, 45, "the second renewal", interval=0.2)
    second = time.monotonic()
    print(f"clock {behind}s behind: renewed {first - started:.1f}s after the start, then {second - first:.1f}s later")
    assert first - started < 40, "the enrolled token's renewal is never further away than 30 s"
    assert 25 < second - first < 40, "the renewal is due 30 s after the token arrived"

    body = status(vm)
    credentials = body["credentials"]
    assert credentials["account"] == account and credentials["renewals"] == 2
    assert token_requests(cluster) - before == 2, "the apiserver served the two renewals, no more"
    # The next renewal, taken from the VM's clock to the apiserver's, comes long before the token in use expires.
    token = parse_claims((vm.workdir / "state" / "token").read_text().strip())
    assert token is not None
    renewal_at = from_utc(credentials["next_renewal"]) + behind
    assert renewal_at - time.time() <= 31 and token.expires_at - renewal_at > 500, credentials
    assert body["health"] == "passing", body["health_reasons"]
    assert addresses(cluster, namespace, vm) == [vm.address]
