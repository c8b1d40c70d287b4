"""A 403 is one actionable line: a missing grant names the Role, the isolation policy's refusal does not."""

from __future__ import annotations

from agent.cluster.errors import Forbidden, from_status
from agent.cluster.resources import ENDPOINT_SLICES


def test_a_missing_grant_points_at_the_role() -> None:
    error = from_status(403, {"message": 'User "x" cannot create resource "endpointslices"', "reason": "Forbidden"},
                        "create", resource=ENDPOINT_SLICES, namespace="vm", name="", retry_after=None)
    assert isinstance(error, Forbidden)
    assert "grant it with the Role in rbac.yaml" in str(error)


def test_a_policy_refusal_says_so_and_keeps_the_policys_message() -> None:
    refusal = ("endpointslices \"s\" is forbidden: ValidatingAdmissionPolicy 'vmesh-vm-isolation' with binding "
               "'vmesh-vm-isolation' denied request: vmesh-vm-a may not delete endpointslices s: it is not this VM's")
    error = from_status(403, {"message": refusal, "reason": "Forbidden"}, "delete", resource=ENDPOINT_SLICES,
                        namespace="vm", name="s", retry_after=None)
    assert "refused by an admission policy" in str(error)
    assert "rbac.yaml" not in str(error)
    assert "vmesh-vm-a may not delete endpointslices s" in str(error)
