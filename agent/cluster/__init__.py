"""Talking to Kubernetes. Only kube.py imports kubernetes_asyncio;
the rest sees plain dicts and our errors."""
