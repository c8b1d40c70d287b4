"""The `kubectl-vmesh` command (kubectl runs it as `kubectl vmesh`).

  install            apply the shipped manifests (namespace, Role, policy, bindings); prints what changed
  enroll VM          the VM's own ServiceAccount and RoleBinding, and its bundle for /etc/vmesh-agent/
  get vms            the fleet: holder machine, last renewal, services and endpoints, backend, identity
  revoke VM          delete the VM's ServiceAccount and RoleBinding (its token is refused at once), objects
  reap               one pass of reaping from here: VMs that stopped renewing are removed (a lone VM has no
                     peer to reap it; run it by hand or from cron)

kubectl hands a plugin its arguments as they are, so kubectl's own --kubeconfig, --context and -n are taken
anywhere on the line. Exit codes: 0 success, 1 a cluster call failed (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from agent.cluster.errors import ClusterError, Conflict, NamespaceMissing, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import (
    LABEL_MANAGED_BY,
    LABEL_SLICE_MANAGED_BY,
    LABEL_VM,
    MANAGER,
    lease_name,
)
from agent.cluster.resources import (
    ENDPOINT_SLICES,
    EXTERNAL_WORKLOADS,
    LEASES,
    ROLE_BINDINGS,
    SERVICE_ACCOUNTS,
    WORKLOAD_ENTRIES,
    Resource,
)
from agent.config import BACKENDS, DNS_LABEL, ClusterSettings, ConfigError, Settings, parse_settings
from agent.durations import parse_duration
from agent.lease.reaper import VM_LEASES, reap_pass
from agent.lease.slots import LABEL_SLOT
from agent.logs import configure, get_logger
from agent.plugin import enforce, enrollment, fleet, manifests
from agent.plugin.bundle import Bundle, DeclaredService
from agent.sync.backends.backend import no_lease, remove_shared_entries
from agent.sync.backends.registry import make_backend

FIELD_MANAGER = "kubectl-vmesh"
ROLE = "vmesh-agent"  # the shared Role of rbac.yaml every VM's RoleBinding points at
LEGACY_ACCOUNT = "vmesh-agent"  # rbac.yaml's shared account: install learns the apiserver's audiences with it
ISOLATION = "vmesh-vm-isolation"  # policy.yaml's; its marker is refused under this name in every namespace
MIN_TOKEN_LIFETIME = 600
EXIT_FAILED = 1
Body = dict[str, Any]


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS: a flag given before the command is not reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS,
                        help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", default=argparse.SUPPRESS,
                        help="kubeconfig context (default: its current)")
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                        help=f"the VMs' namespace (default {manifests.DEFAULT_NAMESPACE})")
    parser = argparse.ArgumentParser(prog="kubectl vmesh", parents=[common],
                                     description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    install = sub.add_parser("install", parents=[common], help="apply the shipped manifests")
    install.add_argument("--dry-run", action="store_true", help="print the manifests, apply nothing")
    install.add_argument("--service-cidr", action="append", default=[], metavar="CIDR",
                         help="a Service range no VM may publish in, besides the ServiceCIDR objects "
                              "(repeatable)")
    install.add_argument("--pod-cidr", action="append", default=[], metavar="CIDR",
                         help="a Pod range no VM may publish in, besides the Nodes' podCIDRs (repeatable)")

    enroll = sub.add_parser("enroll", parents=[common], help="create a VM's identity and write its bundle")
    enroll.add_argument("vm")
    enroll.add_argument("--output", "-o", default="", help="a directory, or a file ending in .tar.gz "
                        "(default ./vmesh-VM/)")
    enroll.add_argument("--server", default="", help="the apiserver URL as the VM reaches it "
                        "(default: the kubeconfig's)")
    enroll.add_argument("--token-lifetime", default="30d", help="the token's lifetime, e.g. 30d, 720h "
                        "(the apiserver may shorten it)")
    enroll.add_argument("--service", action="append", default=[], metavar="NAME[:PORT]",
                        help="a service the VM serves; with a port, declared in config.toml (repeatable)")
    enroll.add_argument("--cidr", action="append", default=[],
                        help="an address range the VM is enrolled for; "
                             "the first one chooses the advertised address (repeatable)")

    get = sub.add_parser("get", parents=[common], help="list the fleet")
    get.add_argument("what", choices=["vms", "vm"])
    get.add_argument("-o", "--output", choices=["json", "yaml", "wide"], default="")

    revoke = sub.add_parser("revoke", parents=[common], help="delete a VM's identity and its objects")
    revoke.add_argument("vm")

    reap = sub.add_parser("reap", parents=[common], help="remove the VMs that stopped renewing their Lease")
    reap.add_argument("--grace", type=float, default=5.0, help="seconds past a Lease's duration (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure("console", "warning", sys.stderr)  # the agent's own backends log through structlog
    namespace = getattr(args, "namespace", manifests.DEFAULT_NAMESPACE)
    try:
        if args.command == "install" and args.dry_run:
            print(manifests.dump(manifests.load(namespace)), end="")
            return 0
        if args.command in ("enroll", "revoke") and not DNS_LABEL.match(args.vm):
            raise ValueError(f"VM name {args.vm!r}: lower-case letters, digits and '-' (a DNS label), "
                             "as vm_name")
        commands: dict[str, Callable[[KubeClient, argparse.Namespace, str], Awaitable[None]]] = {
            "install": install, "enroll": enroll, "get": get_vms, "revoke": revoke, "reap": reap}
        asyncio.run(_with_client(commands[args.command], args, namespace))
        return 0
    except (ClusterError, ValueError, ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _with_client(command: Callable[[KubeClient, argparse.Namespace, str], Awaitable[None]],
                       args: argparse.Namespace, namespace: str) -> None:
    kubeconfig = getattr(args, "kubeconfig", "") or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] \
        or str(Path.home() / ".kube" / "config")
    kube = await KubeClient.connect(ClusterSettings(kubeconfig=kubeconfig,
                                                    context=getattr(args, "context", "")))
    try:
        await command(kube, args, namespace)
    finally:
        await kube.close()


async def _apply(kube: KubeClient, resource: Resource, namespace: str, body: Body) -> str:
    """Server-side apply; returns what happened, as kubectl says it: created, configured or unchanged.

    Compared without the bookkeeping: the first apply to an object made otherwise rewrites only its
    managedFields (and so its resourceVersion), which is no change to report."""
    try:
        before: Body | None = _content(await kube.get(resource, namespace, body["metadata"]["name"]))
    except NotFound:
        before = None
    after = _content(await kube.apply(resource, namespace, body, field_manager=FIELD_MANAGER))
    return "created" if before is None else "unchanged" if before == after else "configured"


def _content(obj: Body) -> Body:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("managedFields", "resourceVersion")}
    return {**obj, "metadata": meta}


async def install(kube: KubeClient, args: argparse.Namespace, namespace: str) -> None:
    extra = [str(enrollment.parse_cidr(c)) for c in [*args.service_cidr, *args.pod_cidr]]
    for doc in manifests.load(namespace):
        resource = manifests.resource_of(doc)
        print(f"{manifests.describe(doc)} {await _apply(kube, resource, namespace, doc)}", flush=True)
    revision = await enforce.publish(kube, namespace, LEGACY_ACCOUNT, extra)
    await _enforced(kube, namespace, ISOLATION)
    await _enforced(kube, namespace, enrollment.POLICY, revision)


async def _enforced(kube: KubeClient, namespace: str, policy: str, revision: str = "") -> None:
    seconds = await enforce.wait_enforced(kube, namespace, policy, revision)
    at = f" at revision {revision}" if revision else ""
    print(f"validatingadmissionpolicy.admissionregistration.k8s.io/{policy} enforced{at} ({seconds:.1f} s)",
          flush=True)


def _lifetime(text: str) -> int:
    seconds = float(text[:-1]) * 86400 if text.endswith("d") and text[:-1].isdigit() else parse_duration(text)
    return int(seconds)


def identity_objects(vm: str, namespace: str, annotations: dict[str, str]) -> tuple[Body, Body]:
    """A VM's ServiceAccount, carrying what it was enrolled for (the enrollment policy is made from it, and
    people read it), and its RoleBinding to the shared Role. bench/fleet enrolls its VMs with these too."""
    account = fleet.service_account_name(vm)
    labels = {LABEL_VM: vm, LABEL_MANAGED_BY: MANAGER}
    sa: Body = {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": namespace, "labels": labels,
                             "annotations": annotations}}
    binding: Body = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": account, "namespace": namespace, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    return sa, binding


async def enroll(kube: KubeClient, args: argparse.Namespace, namespace: str) -> None:
    vm, account = args.vm, fleet.service_account_name(args.vm)
    services = tuple(DeclaredService.parse(s) for s in args.service)
    names = enrollment.check_services(dict.fromkeys(s.name for s in services))
    lifetime = _lifetime(args.token_lifetime)
    if lifetime < MIN_TOKEN_LIFETIME:
        raise ValueError(f"--token-lifetime {args.token_lifetime}: at least 10m "
                         "(the apiserver refuses shorter)")
    cidrs = enrollment.check_cidrs(args.cidr, (await enforce.current_policy(kube))[1])
    sa, binding = identity_objects(vm, namespace, enrollment.account_annotations(cidrs, names, lifetime))
    try:
        outcome = await _apply(kube, SERVICE_ACCOUNTS, namespace, sa)
    except (NamespaceMissing, NotFound) as exc:
        install = "kubectl vmesh install" + (f" -n {namespace}" if namespace != manifests.DEFAULT_NAMESPACE
                                             else "")
        raise ClusterError(f"namespace {namespace} does not exist: run `{install}` first") from exc
    print(f"serviceaccount/{account} {outcome}")
    print(f"rolebinding.rbac.authorization.k8s.io/{account} "
          f"{await _apply(kube, ROLE_BINDINGS, namespace, binding)}")
    # The token only once the apiserver holds the VM to its enrollment.
    await _enforced(kube, namespace, enrollment.POLICY, await enforce.publish(kube, namespace, account))
    if not cidrs or not names:
        anything = " and ".join(w for w, given in (("any address", cidrs), ("any service", names))
                                if not given)
        print(f"note: {vm} may publish {anything} (outside the cluster's Service and Pod ranges); --cidr and "
              "--service bind it", file=sys.stderr)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": lifetime}}
    status = (await kube.create_subresource(SERVICE_ACCOUNTS, namespace, account, "token", request))["status"]
    expires = str(status.get("expirationTimestamp", ""))
    bundle = Bundle(vm_name=vm, namespace=namespace, server=args.server or kube.server,
                    token=str(status["token"]), ca_certificate=kube.ca_certificate(),
                    services=services, cidrs=cidrs,
                    header=f"vmesh-agent config of VM {vm}, written by `kubectl vmesh enroll {vm}`.\n"
                           f"The token in ./token (ServiceAccount {namespace}/{account}) "
                           f"expires on {expires}.")
    parse_settings(bundle.config_toml(), require_cluster=False)  # the agent will accept it
    output = Path(args.output or f"vmesh-{vm}")
    bundle.write(output)
    where = f"tar -xzf {output} -C /etc/vmesh-agent" if output.name.endswith((".tar.gz", ".tgz")) \
        else f"cp {output}/* /etc/vmesh-agent/"
    print(f"token of {account} valid until {expires}")
    print(f"bundle written to {output}: on the VM, {where}")


async def _list(kube: KubeClient, resource: Resource, namespace: str, selector: str) -> list[Body]:
    try:
        return await kube.list(resource, namespace, selector)
    except NotFound:  # a mesh backend's CRD that is not installed
        return []


async def _served(kube: KubeClient, resource: Resource, namespace: str) -> bool:
    """Whether the cluster has the resource (a mesh backend's CRD may not be installed)."""
    try:
        await kube.list(resource, namespace, "vmesh.dev/none-such")
    except NotFound:
        return False
    return True


async def get_vms(kube: KubeClient, args: argparse.Namespace, namespace: str) -> None:
    rows = fleet.fleet(
        leases=await _list(kube, LEASES, namespace, VM_LEASES),
        accounts=await _list(kube, SERVICE_ACCOUNTS, namespace, LABEL_VM),
        slices=await _list(kube, ENDPOINT_SLICES, namespace,
                           f"{LABEL_VM},{LABEL_SLICE_MANAGED_BY}={MANAGER}"),
        workloads=[*await _list(kube, WORKLOAD_ENTRIES, namespace,
                                f"{LABEL_VM},{LABEL_MANAGED_BY}={MANAGER}"),
                   *await _list(kube, EXTERNAL_WORKLOADS, namespace,
                                f"{LABEL_VM},{LABEL_MANAGED_BY}={MANAGER}")],
        now=datetime.datetime.now(datetime.UTC),
    )
    if args.output == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump([r.as_dict() for r in rows], sort_keys=False), end="")
    elif rows:
        print(fleet.table(rows, wide=args.output == "wide"))
    else:
        print(f"No VMs found in namespace {namespace}.", file=sys.stderr)


async def reap(kube: KubeClient, args: argparse.Namespace, namespace: str) -> None:
    """The agents' own reaping, run once from the admin's machine: it waits a lease period watching, then
    deletes the Leases that were not renewed (their objects follow by the garbage collector; a legacy VM's
    addresses by its backend), with the agents' brake."""
    log = get_logger()
    backends: dict[str, str] = {}
    reaped: list[str] = []

    async def after_reap(vm: str) -> None:
        reaped.append(vm)
        backend = backends.get(vm, "endpointslice")
        settings = Settings(vm_name=vm, namespace=namespace, backend=backend)
        await remove_shared_entries(make_backend(settings, kube, vm, no_lease, log))

    for lease in await kube.list(LEASES, namespace, VM_LEASES):
        meta = lease["metadata"]
        backend = str((meta.get("annotations") or {}).get(fleet.ANNOTATION_BACKEND, ""))
        vm = str((meta.get("labels") or {}).get(LABEL_VM, ""))
        backends[vm] = backend if backend in BACKENDS else "endpointslice"
    print(f"watching the VMs' Leases in {namespace} for a lease period...", file=sys.stderr, flush=True)
    braking = await reap_pass(kube, namespace, "kubectl-vmesh", after_reap, grace=args.grace,
                              brake_fraction=0.5, timeout=30.0, log=log)
    if braking:
        print(f"nothing reaped: {braking}", file=sys.stderr)
    for vm in reaped:
        print(f"lease.coordination.k8s.io/{lease_name(vm)} reaped (VM {vm} stopped renewing)")
    if not reaped and not braking:
        print("no dead VMs")


async def revoke(kube: KubeClient, args: argparse.Namespace, namespace: str) -> None:
    vm, account = args.vm, fleet.service_account_name(args.vm)
    # The account first: its tokens stop authenticating (once the apiserver's 10 s token cache lets them go);
    # the RoleBinding right after takes away what they may do at once.
    for resource, name, kind in ((SERVICE_ACCOUNTS, account, "serviceaccount"),
                                 (ROLE_BINDINGS, account, "rolebinding.rbac.authorization.k8s.io")):
        try:
            await kube.delete(resource, namespace, name)
            print(f"{kind}/{name} deleted")
        except NotFound:
            print(f"{kind}/{name} not found")
    # The VM's objects, removed as `vmesh-agent deregister` and the reaper remove them (each backend its own
    # way), then its Lease.
    log = get_logger(vm=vm)
    mesh = {"workloadentry": WORKLOAD_ENTRIES, "externalworkload": EXTERNAL_WORKLOADS}
    for backend in BACKENDS:
        if backend in mesh and not await _served(kube, mesh[backend], namespace):
            continue
        settings = Settings(vm_name=vm, namespace=namespace, backend=backend)
        for name in await make_backend(settings, kube, vm, no_lease, log).remove_all():
            print(f"{name} deleted")
    try:
        await kube.delete(LEASES, namespace, lease_name(vm))
        print(f"lease.coordination.k8s.io/{lease_name(vm)} deleted")
    except NotFound:
        pass
    # The reaper slots it held: free for the others now, not after their duration (up to 300 s).
    for slot in await kube.list(LEASES, namespace, LABEL_SLOT):
        meta, holder = slot["metadata"], str((slot.get("spec") or {}).get("holderIdentity") or "")
        if holder.split("/", maxsplit=1)[0] == vm:
            try:
                await kube.delete(LEASES, namespace, meta["name"], resource_version=meta["resourceVersion"])
                print(f"lease.coordination.k8s.io/{meta['name']} deleted (a reaper slot {vm} held)")
            except (NotFound, Conflict):
                pass  # taken over meanwhile
    revision = await enforce.publish(kube, namespace, LEGACY_ACCOUNT)
    print(f"validatingadmissionpolicy.admissionregistration.k8s.io/{enrollment.POLICY} without {vm} "
          f"(revision {revision})")
