"""sd_notify(3) without dependencies: one datagram per message to $NOTIFY_SOCKET (abstract names too)."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Talks to systemd when started by it (Type=notify); does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine and int(usec) > 0 else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        """Send e.g. notify("READY=1", "STATUS=registered mysqldb at 10.0.0.5"). Never raises."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            pass  # systemd gone or not listening: nothing useful to do about it
