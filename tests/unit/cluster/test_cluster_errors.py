"""Every refusal of the apiserver is one line: what failed, why, what to do. Bodies as the test apiserver sends them."""

from __future__ import annotations

from agent.cluster.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NamespaceMissing,
    NotFound,
    Unauthorized,
    Unavailable,
    from_status,
)
from agent.cluster.resources import LEASES, SELF_SUBJECT_REVIEWS, SERVICES

# POST /apis/coordination.k8s.io/v1/namespaces/nope-ns/leases (the namespace lifecycle admission's answer).
NAMESPACE_404 = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": 'namespaces "nope-ns" not found', "reason": "NotFound",
                 "details": {"name": "nope-ns", "kind": "namespaces"}, "code": 404}
# GET /apis/coordination.k8s.io/v1/namespaces/nope-ns/leases/x
OBJECT_404 = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": 'leases.coordination.k8s.io "x" not found', "reason": "NotFound",
              "details": {"name": "x", "group": "coordination.k8s.io", "kind": "leases"}, "code": 404}


def test_a_write_into_a_missing_namespace_says_to_apply_the_manifests() -> None:
    error = from_status(404, NAMESPACE_404, "create", resource=LEASES, namespace="nope-ns", name="", retry_after=None)
    assert isinstance(error, NamespaceMissing)
    assert not isinstance(error, NotFound)  # nothing was deleted meanwhile: a re-read would not help
    assert str(error) == ("namespace nope-ns does not exist: apply the manifests (kubectl vmesh install / "
                          "packaging/kubernetes/rbac.yaml); cannot create leases.coordination.k8s.io")


def test_a_missing_object_is_not_found_with_its_namespace() -> None:
    error = from_status(404, OBJECT_404, "get", resource=LEASES, namespace="nope-ns", name="x", retry_after=None)
    assert type(error) is NotFound
    assert str(error) == "leases.coordination.k8s.io/x not found in namespace nope-ns"


def test_another_namespace_named_in_the_details_is_no_missing_namespace() -> None:
    other = {**NAMESPACE_404, "details": {"name": "elsewhere", "kind": "namespaces"}}
    error = from_status(404, other, "create", resource=LEASES, namespace="vm", name="", retry_after=None)
    assert type(error) is NotFound


def test_a_cluster_scoped_resource_names_no_namespace() -> None:
    error = from_status(404, {"message": "the server could not find the requested resource", "reason": "NotFound"},
                        "create", resource=SELF_SUBJECT_REVIEWS, namespace="vm", name="", retry_after=None)
    assert str(error) == "selfsubjectreviews.authentication.k8s.io not found"
    error = from_status(403, {"message": "no", "reason": "Forbidden"}, "create", resource=SELF_SUBJECT_REVIEWS,
                        namespace="vm", name="", retry_after=None)
    assert str(error).startswith("cannot create selfsubjectreviews.authentication.k8s.io: grant it with the Role")


def test_a_missing_grant_names_the_call_and_the_role() -> None:
    error = from_status(403, {"message": 'User "x" cannot create resource "leases"', "reason": "Forbidden"},
                        "create", resource=LEASES, namespace="vm", name="", retry_after=None)
    assert isinstance(error, Forbidden)
    assert str(error) == ("cannot create leases.coordination.k8s.io in namespace vm: grant it with the Role in "
                          "rbac.yaml (packaging/kubernetes/, or /usr/share/doc/vmesh-agent/) "
                          '(User "x" cannot create resource "leases")')


def test_rejected_credentials_say_what_was_refused_and_where_the_token_comes_from() -> None:
    error = from_status(401, {"message": "Unauthorized", "reason": "Unauthorized"}, "update", resource=LEASES,
                        namespace="vm", name="vmesh-a", retry_after=None)
    assert isinstance(error, Unauthorized)
    assert str(error) == ("cannot update leases.coordination.k8s.io/vmesh-a: the cluster rejected the agent's "
                          "credentials (Unauthorized); check cluster.token_file or the kubeconfig")


def test_an_invalid_object_keeps_the_apiservers_reason() -> None:
    message = 'Service "3db" is invalid: metadata.name: Invalid value: "3db": a DNS-1035 label must ...'
    error = from_status(422, {"message": message, "reason": "Invalid"}, "create", resource=SERVICES, namespace="vm",
                        name="", retry_after=None)
    assert isinstance(error, Invalid)
    assert str(error) == f"create services rejected: {message}"


def test_a_conflict_keeps_the_apiservers_message() -> None:
    error = from_status(409, {"message": "the object has been modified", "reason": "Conflict"}, "update",
                        resource=LEASES, namespace="vm", name="vmesh-a", retry_after=None)
    assert isinstance(error, Conflict)
    assert not error.already_exists
    assert str(error) == "update leases.coordination.k8s.io/vmesh-a: the object has been modified"


def test_an_overloaded_or_failing_apiserver_is_transient_and_says_which() -> None:
    busy = from_status(429, {"message": "Too many requests, please try again later."}, "update", resource=LEASES,
                       namespace="vm", name="vmesh-a", retry_after="3")
    assert isinstance(busy, Unavailable)
    assert busy.transient
    assert busy.retry_after == 3.0
    assert str(busy) == ("update leases.coordination.k8s.io/vmesh-a: the apiserver is overloaded: "
                         "Too many requests, please try again later.")
    failed = from_status(503, {}, "list", resource=LEASES, namespace="vm", name="", retry_after=None)
    assert str(failed) == "list leases.coordination.k8s.io: the apiserver failed (HTTP 503)"
