"""Making the cluster match the desired state: one loop (reconciler.py), one backend per file."""
