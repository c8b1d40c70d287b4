"""A test standing in for systemd's notify socket: NOTIFY_SOCKET for an agent, and the messages it sent."""

from __future__ import annotations

import socket
from pathlib import Path


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.extend(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        self.sock.close()
