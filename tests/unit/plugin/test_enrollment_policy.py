"""The enrollment policy's pure part (agent/plugin/enrollment.py): accounts in, one policy out."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agent.plugin import enrollment
from agent.plugin.enrollment import DEFAULT_LIFETIME, Enrollment


def account(vm: str, namespace: str = "vm", **notes: str) -> dict[str, object]:
    return {"metadata": {"name": f"vmesh-vm-{vm}", "namespace": namespace,
                         "labels": {"vmesh.dev/vm": vm, "app.kubernetes.io/managed-by": "vmesh-agent"},
                         "annotations": notes}}


def variables(policy: dict[str, object]) -> dict[str, str]:
    spec = policy["spec"]
    assert isinstance(spec, dict)
    return {v["name"]: v["expression"] for v in spec["variables"]}


def test_an_account_gives_what_its_vm_was_enrolled_for() -> None:
    notes = enrollment.account_annotations(("10.0.0.5/32",), ("mysqldb", "redis"), 86400)
    assert enrollment.of_account(account("db-1", **notes)) == Enrollment(
        "vm", "db-1", ("10.0.0.5/32",), ("mysqldb", "redis"), 86400)
    # The test bed's and older enrolls' accounts: nothing recorded, so the defaults.
    assert enrollment.of_account(account("db-2")) == Enrollment("vm", "db-2")
    assert not Enrollment("vm", "db-2").bound
    # Not a VM's account: the legacy shared one, or a label that does not match the name.
    legacy = account("x")
    meta = legacy["metadata"]
    assert isinstance(meta, dict)
    meta["name"] = "vmesh-agent"
    assert enrollment.of_account(legacy) is None


def test_only_bound_vms_take_room_and_the_same_fleet_makes_the_same_policy() -> None:
    fleet = [Enrollment("vm", "b", ("10.0.0.6/32",), ("mysqldb",)), Enrollment("vm", "a"),
             Enrollment("other", "c", lifetime=3600)]
    policy, binding = enrollment.build(fleet, ("10.96.0.0/16",), ("https://k",))
    assert binding["spec"] == {"policyName": "vmesh-vm-enrollment", "validationActions": ["Deny"]}
    v = variables(policy)
    # One bucket per last character of the VM names: a request builds its own VM's bucket only.
    assert json.loads(v["cidrs_b"]) == {"vm/b": ["10.0.0.6/32"]}
    assert json.loads(v["services_b"]) == {"vm/b": ["mysqldb"]}
    assert json.loads(v["lifetime_c"]) == {"other/c": 3600}
    assert "cidrs_a" not in v and "cidrs_c" not in v  # a is not bound; c only by its lifetime
    assert json.loads(v["refused"]) == ["10.96.0.0/16"]
    assert v["enrolledCIDRs"] == "variables.bucket == 'b' ? variables.cidrs_b[?variables.key].orValue([]) : []"
    assert v["lifetime"].endswith(f": {DEFAULT_LIFETIME}")
    again, _ = enrollment.build(list(reversed(fleet)), ("10.96.0.0/16",), ("https://k",))
    assert enrollment.revision_of(again) == enrollment.revision_of(policy)
    changed, _ = enrollment.build(fleet[:1], ("10.96.0.0/16",), ("https://k",))
    assert enrollment.revision_of(changed) != enrollment.revision_of(policy)
    # The marker rule names the revision, so a waiter knows which version is enforced.
    spec = policy["spec"]
    assert isinstance(spec, dict)
    assert enrollment.revision_of(policy) in spec["validations"][0]["message"]
    assert enrollment.refused_of(policy) == ("10.96.0.0/16",)
    assert enrollment.audiences_of(policy) == ("https://k",)


def test_a_bucket_too_big_for_one_cel_literal_is_refused_with_the_reason() -> None:
    fleet = [Enrollment("vm", f"vm-{i:05d}", (f"10.{i // 250}.{i % 250}.1/32",), ("mysqldb",)) for i in range(4000)]
    enrollment.build(fleet, (), ())  # 4,000 fit: ten buckets (names ending in 0-9) of 400
    same_end = [dataclasses.replace(e, vm=e.vm + "a") for e in fleet]
    with pytest.raises(ValueError, match=r"VMs whose names end in 'a' would be .* over CEL's limit \(90,000\)"):
        enrollment.build(same_end, (), ())


@pytest.mark.parametrize(("cidr", "words"), [
    ("10.0.0.5/24", "not an address range"),  # host bits set: the admin meant something else
    ("banana", "not an address range"),
    ("127.0.0.1", "loopback, link-local"),
    ("169.254.169.254/32", "loopback, link-local"),
    ("224.0.0.1", "loopback, link-local"),
    ("0.0.0.0/0", "every address; leave --cidr out"),
    ("10.96.0.0/12", "overlaps the cluster's Service/Pod range 10.96.0.0/16"),
    ("10.96.3.4", "overlaps the cluster's Service/Pod range 10.96.0.0/16"),
])
def test_enrolled_cidrs_are_checked_before_anything_is_written(cidr: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        enrollment.check_cidrs([cidr], ["10.96.0.0/16", "10.244.0.0/16"])


def test_good_cidrs_and_services_come_back_normalised() -> None:
    assert enrollment.check_cidrs(["10.0.0.5", "2001:db8::/64"], ["10.96.0.0/16"]) == ("10.0.0.5/32", "2001:db8::/64")
    assert enrollment.check_services(["mysqldb"]) == ("mysqldb",)
    with pytest.raises(ValueError, match="DNS-1035 label"):
        enrollment.check_services(["MySQL"])


def test_ranges_are_merged_normalised_and_sorted() -> None:
    assert enrollment.merge_ranges(["10.244.0.0/24", "10.96.0.1"], ["fd00::/108", "10.244.0.0/24"]) == (
        "10.96.0.1/32", "10.244.0.0/24", "fd00::/108")
    assert enrollment.merge_ranges(["10.96.0.0/16", "10.96.0.1"]) == ("10.96.0.0/16",)  # the kubernetes Service
