"""Discovery: what listens on this VM, what it speaks, and which address the VM is reached at."""
