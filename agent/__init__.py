"""vmesh-agent: registers a VM's local services into Kubernetes."""

__version__ = "0.2.0"
