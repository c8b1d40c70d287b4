"""Who holds which Lease: the holder identity, the VM's own heartbeat Lease and its pace,
and the reaper slots."""
