"""The project's own error types for cluster calls, so callers never import the client library."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.cluster.resources import Resource


class ClusterError(Exception):
    """A call to the cluster failed. `transient` errors are worth retrying as they are."""

    transient = False

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(ClusterError):
    pass


class Conflict(ClusterError):
    """409: a stale resourceVersion, or (reason AlreadyExists) a create of an existing object."""

    @property
    def already_exists(self) -> bool:
        return self.reason == "AlreadyExists"


class Gone(ClusterError):
    """410: a watch's resourceVersion is too old; list again."""


class Forbidden(ClusterError):
    """403: RBAC does not allow the call. The message is one actionable line."""


class Unauthorized(ClusterError):
    """401: the token is missing, expired or not trusted by this cluster."""


class Invalid(ClusterError):
    """422 or 400: the object was rejected; retrying the same request will not help."""


class Unavailable(ClusterError):
    """Connection refused or reset, timeout, 429 or 5xx: try again later."""

    transient = True

    def __init__(self, message: str, *, status: int = 0, reason: str = "", retry_after: float | None = None):
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after


class NamespaceMissing(ClusterError):
    """404 for a write into a namespace that does not exist. No NotFound: nothing changed under us, and a
    re-read will not help; the manifests are not applied."""


MANIFESTS = "kubectl vmesh install / packaging/kubernetes/rbac.yaml"
POLICY_HINT = "refused by an admission policy (vmesh-vm-isolation keeps a VM's account to its own objects)"
RBAC_HINT = "grant it with the Role in rbac.yaml (packaging/kubernetes/, or /usr/share/doc/vmesh-agent/)"


def from_status(status: int, payload: Mapping[str, Any], verb: str, *, resource: Resource, namespace: str,
                name: str, retry_after: str | None) -> ClusterError:
    """The apiserver's refusal (its Status body) as one line: what failed, why, and what to do."""
    detail = str(payload.get("message", ""))
    message = detail or f"HTTP {status}"
    reason = str(payload.get("reason", ""))
    what = f"{resource.qualified}/{name}" if name else resource.qualified
    where = f" in namespace {namespace}" if namespace and not resource.cluster_scoped else ""
    details = payload.get("details")
    details = details if isinstance(details, Mapping) else {}
    if status == 404 and where and details.get("kind") == "namespaces" and details.get("name") == namespace:
        # The namespace lifecycle admission answers a write into a missing namespace so
        # (a read just finds nothing).
        return NamespaceMissing(f"namespace {namespace} does not exist: apply the manifests ({MANIFESTS}); "
                                f"cannot {verb} {what}", status=status, reason=reason)
    if status == 404:
        return NotFound(f"{what} not found{where}", status=status, reason=reason)
    if status == 409:
        return Conflict(f"{verb} {what}: {message}", status=status, reason=reason)
    if status == 403:
        # An admission policy's refusal is no missing grant: the Role would not help,
        # the message says what would.
        hint = POLICY_HINT if "ValidatingAdmissionPolicy" in message else RBAC_HINT
        return Forbidden(f"cannot {verb} {resource.qualified}{where}: {hint} ({message})", status=status,
                         reason=reason)
    if status == 401:
        return Unauthorized(f"cannot {verb} {what}: the cluster rejected the agent's credentials "
                            f"({message}); check cluster.token_file or the kubeconfig",
                            status=status, reason=reason)
    if status in (400, 422):
        return Invalid(f"{verb} {what} rejected: {message}", status=status, reason=reason)
    if status == 429 or status >= 500:
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        why = "the apiserver is overloaded" if status == 429 else f"the apiserver failed (HTTP {status})"
        return Unavailable(f"{verb} {what}: {why}" + (f": {detail}" if detail else ""), status=status,
                           reason=reason, retry_after=seconds)
    return ClusterError(f"{verb} {what}: HTTP {status}: {message}", status=status, reason=reason)
