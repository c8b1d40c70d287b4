"""Inside the bench's network namespace (`bench/fleet --listener`): the one server every VM's health check
connects to. Standard library only."""

from __future__ import annotations

import socket

from .constants import SERVICE_PORT


def listener_main() -> int:
    """One TCP listener on 0.0.0.0:3306 for every VM's health check: accept, close."""
    server = socket.create_server(("0.0.0.0", SERVICE_PORT), backlog=4096)
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        conn.close()
