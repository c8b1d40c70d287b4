"""Where a VM's registrations are written: the Backend protocol, one file per backend (EndpointSlice, legacy
Endpoints, Istio WorkloadEntry, Linkerd ExternalWorkload) with the shared cycle of the per-VM object backends,
and the registry choosing one by name."""
