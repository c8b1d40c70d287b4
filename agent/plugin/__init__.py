"""`kubectl vmesh`, the admin's side: install the manifests, enroll a VM, list the fleet, revoke a VM.

kubectl runs any `kubectl-vmesh` on PATH as `kubectl vmesh`; the pip package and the deb both provide it.
"""
