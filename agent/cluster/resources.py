"""The API resources the agent writes: where they live in the REST API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    cluster_scoped: bool = False  # Namespaces, admission policies, reviews: no namespace in their path

    @property
    def qualified(self) -> str:
        """How RBAC and error messages name it: "endpointslices.discovery.k8s.io", "services"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str, name: str = "") -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = "" if self.cluster_scoped else f"/namespaces/{namespace}"
        collection = f"{prefix}{scope}/{self.plural}"
        return f"{collection}/{name}" if name else collection


SERVICES = Resource("", "v1", "services")
ENDPOINTS = Resource("", "v1", "endpoints")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
WORKLOAD_ENTRIES = Resource("networking.istio.io", "v1", "workloadentries")
EXTERNAL_WORKLOADS = Resource("workload.linkerd.io", "v1beta1", "externalworkloads")
# The agent creates only serviceaccounts/<own>/token; the admin's plugin (kubectl vmesh) manages accounts and
# their RoleBindings besides the agent's own objects.
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
SELF_SUBJECT_REVIEWS = Resource("authentication.k8s.io", "v1", "selfsubjectreviews", cluster_scoped=True)
# The plugin's `install` and `enroll`: the enrollment policy, every namespace's VM accounts, and the cluster's
# own address ranges no VM may publish (Service CIDRs, the Nodes' Pod CIDRs).
ADMISSION_POLICIES = Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
                              cluster_scoped=True)
ADMISSION_POLICY_BINDINGS = Resource("admissionregistration.k8s.io", "v1",
                                     "validatingadmissionpolicybindings", cluster_scoped=True)
ALL_SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", cluster_scoped=True)  # listed across namespaces
SERVICE_CIDRS = Resource("networking.k8s.io", "v1", "servicecidrs", cluster_scoped=True)
NODES = Resource("", "v1", "nodes", cluster_scoped=True)
