"""Which token the agent uses (issue 20, item 3), against the real control plane, with bundles written by `kubectl
vmesh enroll` and unpacked by `tar -xzf` as the README says, while the agent runs.

The agent has two token files: the enrolled one (`cluster.token_file`, the bundle's) and its own renewal
(`state_dir/token`). Before, the newest by `iat` won even when it was another VM's (a golden image's left-over
renewal shadowed the admin's fresh bundle: the VM never registered) or refused by the cluster (critical until the
next renewal, which the refused token could not ask for); and a token refused once and accepted later left the
agent critical until its next renewal (the account was not asked about again while registering)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.cluster.tokens import parse_claims, utc, write_token
from tests.integration.test_token_rotation import addresses, status
from tests.testbed.cluster import Cluster
from tests.testbed.plugin import bundle_paths, kubectl_vmesh, untar_bundle
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until

FRACTION = 0.05  # of a 10 min token: renewed 30 s after it arrived


def enroll(cluster: Cluster, namespace: str, vm: str, bundle: Path, lifetime: str = "10m") -> str:
    """`kubectl vmesh enroll VM -o BUNDLE.tar.gz`; the token it holds."""
    kubectl_vmesh(cluster, "enroll", vm, "-n", namespace, "-o", str(bundle), "--server", cluster.url_from_vms,
                  "--token-lifetime", lifetime)
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("token")
        assert member is not None
        return member.read().decode().strip()


def whoami(cluster: Cluster, token: str) -> str:
    """The account the apiserver takes `token` for ("" when it refuses it)."""
    result = cluster.kubectl("--token", token, "auth", "whoami", "-o", "json", check=False)
    return str(json.loads(result.stdout)["status"]["userInfo"]["username"]) if result.returncode == 0 else ""


def subject(token: str) -> str:
    claims = parse_claims(token)
    return claims.subject if claims else ""


def test_a_golden_images_left_over_renewal_of_another_vm_does_not_shadow_the_admins_bundle(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, tmp_path: Path
) -> None:
    """The VM was cloned from an image captured after its template's agent had renewed its token: the state dir
    holds the template's renewal, newer than the clone's bundle (which waited a while). The agent registers as
    the clone, keeps ignoring the left-over when the clone is re-enrolled while it runs, and its own renewal
    replaces the left-over."""
    vm = make_vm("clone")
    vm.start_mariadb(mariadb_template)
    template = f"tmpl-{vm.name}"
    own = f"system:serviceaccount:{namespace}:vmesh-vm-{vm.name}"
    theirs = f"system:serviceaccount:{namespace}:vmesh-vm-{template}"
    first = enroll(cluster, namespace, vm.name, tmp_path / "first.tar.gz")
    enroll(cluster, namespace, template, tmp_path / "template.tar.gz")
    time.sleep(1.1)  # iat has whole seconds: the left-over is strictly newer than the clone's bundle
    left_over = cluster.kubectl("create", "token", f"vmesh-vm-{template}", "-n", namespace,
                                "--duration", "10m").stdout.strip()
    assert whoami(cluster, left_over) == theirs, "a valid token, of the template's account"
    first_claims, left_over_claims = parse_claims(first), parse_claims(left_over)
    assert first_claims is not None and left_over_claims is not None
    assert left_over_claims.issued_at > first_claims.issued_at, "the left-over is the newest"
    renewed_file = vm.workdir / "state" / "token"
    write_token(str(renewed_file), left_over)  # as the template's agent wrote it, captured in the image

    etc = untar_bundle(vm, tmp_path / "first.tar.gz")
    # Renewed at 10 % of a 10 min token (60 s after its iat): after the re-enrollment below, within the test.
    config = vm.write_config(namespace, first, cluster={**bundle_paths(etc), "token_renew_fraction": 0.1})
    vm.start_agent(config)
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered as the clone")
    body = wait_until(lambda: (b := status(vm))["health"] == "passing" and b, 10, "passing")
    assert body["credentials"]["account"] == own and body["credentials"]["kind"] == "own", body["credentials"]
    assert body["credentials"]["token_file"] == str(etc / "token")
    assert f"not using {renewed_file}: a token of {theirs}" in (body["credentials"]["problem"] or ""), body
    assert cluster.get("lease", f"vmesh-{template}", namespace) is None, "nothing registered as the template"

    # Re-enrolled while it runs, the left-over still there: the new bundle's token is taken, the left-over not.
    second = enroll(cluster, namespace, vm.name, tmp_path / "second.tar.gz")
    second_claims = parse_claims(second)
    assert second_claims is not None
    untar_bundle(vm, tmp_path / "second.tar.gz")
    reenrolled = time.monotonic()
    wait_until(lambda: status(vm)["credentials"]["expires"] == utc(second_claims.expires_at), 5,
               "the re-enrolled token in use")
    time.sleep(2)  # credential checks (every second) and heartbeats on it
    body = status(vm)
    assert body["health"] == "passing" and body["credentials"]["account"] == own, body
    assert body["credentials"]["token_file"] == str(etc / "token")
    assert addresses(cluster, namespace, vm) == [vm.address]
    assert renewed_file.read_text().strip() == left_over, "not renewed yet: the left-over is still there"
    assert vm.agent is not None and vm.agent.poll() is None

    # The clone's own renewal (60 s after the new token's iat) replaces the left-over, and the warning goes.
    wait_until(lambda: subject(renewed_file.read_text()) == own, 75, "the clone's own renewal", interval=0.2)
    print(f"the left-over replaced by the clone's renewal {time.monotonic() - reenrolled:.1f}s after re-enrolling")
    body = wait_until(lambda: (b := status(vm))["credentials"]["token_file"] == str(renewed_file) and b, 5,
                      "the renewal in use")
    assert body["credentials"]["problem"] is None and body["health"] == "passing", body
    assert whoami(cluster, renewed_file.read_text().strip()) == own
    assert cluster.get("lease", f"vmesh-{vm.name}", namespace) is not None
    assert cluster.get("lease", f"vmesh-{template}", namespace) is None


def signed_elsewhere(token: str, workdir: Path) -> str:
    """`token` with its header and claims as they are, signed by another key: what a bundle written against another
    cluster holds (the same VM name and namespace there); this cluster refuses it."""
    header, payload, _ = token.split(".")
    key = workdir / "other-cluster-sa.key"
    if not key.exists():
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True, timeout=30)
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=f"{header}.{payload}".encode(),
                               check=True, capture_output=True, timeout=30).stdout
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def with_token(bundle: Path, token: str, out: Path) -> None:
    """`bundle` with its token member replaced, owners, modes and the rest as `kubectl vmesh enroll` wrote them."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            content = src.extractfile(member)
            assert content is not None
            data = (token + "\n").encode() if member.name == "token" else content.read()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def test_a_newer_bundle_token_the_cluster_refuses_gives_way_to_the_valid_renewal(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, tmp_path: Path
) -> None:
    """The VM runs and has renewed its token; the admin then unpacks a bundle the cluster refuses (written against
    another cluster: its token is this VM's by its claims, and the newest, but not signed by this cluster). Before,
    the newest token was used whatever the cluster said: health critical, the renewal refused too, until someone
    fixed the file. Now one 401 makes the agent use its valid renewal, and it stays registered and passing."""
    vm = make_vm("refused")
    vm.start_mariadb(mariadb_template)
    own = f"system:serviceaccount:{namespace}:vmesh-vm-{vm.name}"
    enrolled = enroll(cluster, namespace, vm.name, tmp_path / "vm.tar.gz")
    etc = untar_bundle(vm, tmp_path / "vm.tar.gz")
    vm.start_agent(vm.write_config(namespace, enrolled,
                                   cluster={**bundle_paths(etc), "token_renew_fraction": FRACTION}))
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    renewed_file = vm.workdir / "state" / "token"
    wait_until(lambda: renewed_file.exists() and subject(renewed_file.read_text()) == own, 45, "a renewal",
               interval=0.2)
    renewal = renewed_file.read_text().strip()
    wait_until(lambda: status(vm)["credentials"]["token_file"] == str(renewed_file), 5, "the renewal in use")

    fresh = enroll(cluster, namespace, vm.name, tmp_path / "fresh.tar.gz")
    refused = signed_elsewhere(fresh, tmp_path)
    assert subject(refused) == own and whoami(cluster, refused) == "", "this VM's by its claims, refused by the cluster"
    refused_claims, renewal_claims = parse_claims(refused), parse_claims(renewal)
    assert refused_claims is not None and renewal_claims is not None
    assert refused_claims.issued_at > renewal_claims.issued_at, "the refused token is the newest"
    with_token(tmp_path / "fresh.tar.gz", refused, tmp_path / "other-cluster.tar.gz")
    lease = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert lease is not None
    untar_bundle(vm, tmp_path / "other-cluster.tar.gz")
    unpacked = time.monotonic()
    assert (etc / "token").read_text().strip() == refused

    # The refusal is met once, and the agent goes on with the renewal: passing, the Lease renewing.
    line = vm.wait_log(lambda entry: "the cluster refuses it" in str(entry.get("event", "")), 10, "the 401 said")
    assert line["token_file"] == str(etc / "token"), line
    body = wait_until(lambda: (b := status(vm))["health"] == "passing" and b["credentials"]["token_file"] ==
                      str(renewed_file) and b, 10, "passing on the renewal", interval=0.2)
    print(f"back on the renewal, passing, {time.monotonic() - unpacked:.1f}s after the refused bundle was unpacked")
    since = time.monotonic()

    def beat_since() -> bool:
        ago = status(vm)["last_heartbeat"]["seconds_ago"]
        return ago is not None and ago < time.monotonic() - since

    wait_until(beat_since, 5, "a heartbeat on the renewal")
    time.sleep(5)  # heartbeats, syncs and credential checks: the refused token is not taken up again
    body = status(vm)
    assert body["health"] == "passing", body["health_reasons"]
    assert body["credentials"]["account"] == own and body["credentials"]["kind"] == "own", body["credentials"]
    assert body["credentials"]["token_file"] == str(renewed_file)
    assert body["credentials"]["refused_requests"] <= 3, "the refused token is left alone"
    assert addresses(cluster, namespace, vm) == [vm.address]
    renewed = cluster.get("lease", f"vmesh-{vm.name}", namespace)
    assert renewed is not None and renewed["spec"]["renewTime"] != lease["spec"]["renewTime"]
    assert vm.agent is not None and vm.agent.poll() is None


def minted_ahead(cluster: Cluster, token: str, seconds: int) -> str:
    """`token` as an apiserver of the same cluster whose clock is `seconds` ahead would have minted it: its times
    moved, signed with the cluster's own service-account key. This apiserver refuses it until its `nbf` is less
    than the 60 s of leeway it allows away ("service account token is not valid yet"), then accepts it."""
    header, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for key in ("iat", "nbf", "exp"):
        claims[key] += seconds
    body = f"{header}.{base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b'=').decode()}"
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(Path(cluster.ca_file).parent / "sa.key")],
                               input=body.encode(), check=True, capture_output=True, timeout=30).stdout
    return f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_a_token_refused_once_then_accepted_leaves_the_agent_critical_only_until_the_next_probe(
    cluster: Cluster, namespace: str, make_vm: Callable[[str], VM], mariadb_template: Path, tmp_path: Path
) -> None:
    """Re-enrolled while it runs with a bundle whose token this apiserver does not take yet (minted by a member of
    the control plane whose clock is 80 s ahead) and takes ~20 s later. Before, the 401 left the account REJECTED
    and it was asked about again only when the token changed: critical until the next renewal (~24 days with
    a 30-day token). Now it is asked about again every second, through the credential guard, whose first slow
    probe (30 s) finds the token accepted."""
    vm = make_vm("notyet")
    vm.start_mariadb(mariadb_template)
    own = f"system:serviceaccount:{namespace}:vmesh-vm-{vm.name}"
    enrolled = enroll(cluster, namespace, vm.name, tmp_path / "vm.tar.gz")
    etc = untar_bundle(vm, tmp_path / "vm.tar.gz")
    vm.start_agent(vm.write_config(namespace, enrolled, cluster=bundle_paths(etc)))  # no renewal within the test
    wait_until(lambda: addresses(cluster, namespace, vm) == [vm.address], 30, "registered")
    wait_until(lambda: status(vm)["health"] == "passing", 10, "passing")

    ahead = minted_ahead(cluster, enroll(cluster, namespace, vm.name, tmp_path / "fresh.tar.gz"), 80)
    assert subject(ahead) == own and whoami(cluster, ahead) == "", "not valid yet"
    ahead_claims = parse_claims(ahead)
    assert ahead_claims is not None
    with_token(tmp_path / "fresh.tar.gz", ahead, tmp_path / "ahead.tar.gz")
    untar_bundle(vm, tmp_path / "ahead.tar.gz")
    unpacked = time.monotonic()
    body = wait_until(lambda: (b := status(vm))["health"] == "critical" and b, 5, "critical: the token refused")
    assert any("the cluster refuses it" in r for r in body["health_reasons"]), body["health_reasons"]

    wait_until(lambda: whoami(cluster, ahead) == own, 40, "the apiserver taking the token", interval=1)
    accepted = time.monotonic() - unpacked
    # The guard's first probe comes 30 s (+-10 %) after the refusal; then the account is asked about at the next
    # tick, and the Lease, lapsed meanwhile, taken again.
    body = wait_until(lambda: (b := status(vm))["health"] == "passing" and b, 60 - accepted, "passing again",
                      interval=0.2)
    print(f"refused at first, accepted by the apiserver {accepted:.1f}s later, the agent passing again "
          f"{time.monotonic() - unpacked:.1f}s after the bundle was unpacked")
    assert body["credentials"]["account"] == own and body["credentials"]["kind"] == "own", body["credentials"]
    assert body["credentials"]["expires"] == utc(ahead_claims.expires_at), "on the new token"
    assert body["credentials"]["problem"] is None
    since = time.monotonic()
    time.sleep(3)
    assert status(vm)["health"] == "passing"
    ago = status(vm)["last_heartbeat"]["seconds_ago"]
    assert ago is not None and ago < time.monotonic() - since, "the Lease renewing"
    assert addresses(cluster, namespace, vm) == [vm.address]
    assert vm.agent is not None and vm.agent.poll() is None
