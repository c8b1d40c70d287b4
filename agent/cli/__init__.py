"""`vmesh-agent`, the command: its argument parsing and commands (main.py), the client of the agent's local
API (local_api.py) and the unit's ExecStop (stop_command.py, kept free of heavy imports)."""
