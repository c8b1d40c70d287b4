"""sd_notify(3) without dependencies: one datagram per message to $NOTIFY_SOCKET (abstract names too)."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Talks to systemd when started by it (Type=notify); does nothing otherwise.

    Once STOPPING=1 is sent, WATCHDOG=1 never is again, whoever asks: a stopping agent's loops are gone, and a
    ping would tell systemd otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine and int(usec) > 0 else 0.0
        self.stopping = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        """Send e.g. notify("READY=1", "STATUS=registered mysqldb at 10.0.0.5"). Never raises."""
        if self.stopping:
            lines = tuple(line for line in lines if line != "WATCHDOG=1")
        self.stopping = self.stopping or "STOPPING=1" in lines
        if not self._address or not lines:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never blocks the event loop: with the receiver's queue full (net.unix.max_dgram_qlen, 10 by
                # default, when it reads slowly) a blocking send would stall every loop of the agent.
                sock.setblocking(False)
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
        except OSError:
            pass  # systemd gone, not listening or not keeping up: nothing useful to do about it
