"""Real components for tests: the control plane, simulated VMs (network namespaces), MariaDB."""
