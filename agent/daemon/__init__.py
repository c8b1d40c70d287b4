"""One running agent: the wiring, its start and the shutdown order (agent.py), its root tasks, systemd
notifications and the maintenance store."""
