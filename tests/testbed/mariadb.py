"""A private MariaDB server per simulated VM: own datadir and socket, loaded with Istio's ratings data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pymysql

from tests.testbed.waiting import wait_until

RATINGS_SQL = [
    "CREATE DATABASE IF NOT EXISTS test",
    "CREATE TABLE IF NOT EXISTS test.ratings (ReviewID INT PRIMARY KEY, Rating INT)",
    "INSERT INTO test.ratings VALUES (1, 5), (2, 4)",
    "CREATE USER IF NOT EXISTS 'ratings'@'%' IDENTIFIED BY 'ratings-pass'",
    "GRANT SELECT ON test.* TO 'ratings'@'%'",
]
RATINGS_USER = ("ratings", "ratings-pass")


def make_template(base: Path) -> Path:
    """A datadir with the ratings data, made once per test session (mariadb-install-db is slow)."""
    template = base / "mariadb-template"
    if (template / "test" / "ratings.frm").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={template}", "--user=root", "--skip-test-db",
         "--auth-root-authentication-method=socket"],
        check=True, capture_output=True,
    )
    server = MariaDB(template, netns=None, port=0)
    server.start()
    try:
        conn = pymysql.connect(unix_socket=str(server.socket), user="root")
        with conn.cursor() as cur:
            for statement in RATINGS_SQL:
                cur.execute(statement)
        conn.commit()
        conn.close()
    finally:
        server.stop()
    return template


class MariaDB:
    def __init__(self, datadir: Path, netns: str | None, port: int = 3306, bind: str = "0.0.0.0") -> None:
        self.datadir = datadir
        self.netns = netns
        self.port = port
        self.bind = bind
        self.socket = datadir / "mysqld.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            "mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--pid-file={self.datadir / 'mysqld.pid'}", "--user=root", "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M", "--skip-log-bin", f"--log-error={self.datadir / 'error.log'}",
        ]
        args += ["--skip-networking"] if self.port == 0 else [f"--port={self.port}", f"--bind-address={self.bind}"]
        if self.netns:
            args = ["ip", "netns", "exec", self.netns, *args]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._accepting, 30, f"mariadb in {self.datadir}")

    def _accepting(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            log = (self.datadir / "error.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"mariadbd exited with {self._proc.returncode}: {log}")
        # A raw connect (pymysql leaks its socket when the connect fails) that reads the greeting.
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            try:
                sock.connect(str(self.socket))
                return bool(sock.recv(64))
            except OSError:
                return False

    def pause(self) -> None:
        """SIGSTOP: the socket still listens and the kernel still accepts, but no greeting comes (a busy server)."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)  # `ip netns exec` execs mariadbd: same pid

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def run_sql(self, *statements: str) -> None:
        """As root over the unix socket (the accounts TCP clients see are the ones the tests change)."""
        conn = pymysql.connect(unix_socket=str(self.socket), user="root")
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused server would never act on the signal
            self._proc.send_signal(sig)
            self._proc.wait(timeout=30)
        self._proc = None
