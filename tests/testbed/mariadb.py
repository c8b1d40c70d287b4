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

# The test bed's MariaDB reads Debian's own configuration (/etc/mysql/my.cnf and what it includes), as on a VM:
# name resolution on (no skip-name-resolve), so the host cache counts connection errors; max_connect_errors
# 100; log_warnings 2. Each server then gets only these, and why:
# - datadir, socket, pid-file: several servers (one per simulated VM) on one machine, each its own files;
# - user=root: the test bed runs as root and owns the copied datadirs (Debian runs it as mysql);
# - port and bind-address: Debian binds 127.0.0.1 only; a VM that publishes MariaDB is made to listen on its
#   address (0.0.0.0), as the README tells the admin;
# - log-error: a file per server, for the tests to read (Debian's goes to stderr, i.e. the journal; the same
#   lines);
# - innodb-buffer-pool-size=16M: memory, with many VMs on a 24 GB machine (Debian's default is 128M);
# - performance-schema=ON, only for the tests that read performance_schema.host_cache (Debian's default is
#   OFF; it only makes the host cache visible, the cache itself works the same either way).
def server_args(datadir: Path, socket_path: Path, port: int, bind: str, performance_schema: bool) -> list[str]:
    args = [
        "mariadbd", f"--datadir={datadir}", f"--socket={socket_path}", f"--pid-file={datadir / 'mysqld.pid'}",
        "--user=root", f"--log-error={datadir / 'error.log'}", "--innodb-buffer-pool-size=16M",
    ]
    args += ["--skip-networking"] if port == 0 else [f"--port={port}", f"--bind-address={bind}"]
    return args + (["--performance-schema=ON"] if performance_schema else [])


def make_template(base: Path) -> Path:
    """A datadir with the ratings data, made once per test session (mariadb-install-db is slow)."""
    template = base / "mariadb-template"
    if (template / "test" / "ratings.frm").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    # --no-defaults here only: the datadir is made once for all VMs, away from Debian's /var/lib/mysql; the
    # servers started from copies of it read Debian's configuration (server_args).
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
    def __init__(self, datadir: Path, netns: str | None, port: int = 3306, bind: str = "0.0.0.0",
                 performance_schema: bool = False) -> None:
        self.datadir = datadir
        self.performance_schema = performance_schema
        self.error_log = datadir / "error.log"
        self.netns = netns
        self.port = port
        self.bind = bind
        self.socket = datadir / "mysqld.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = server_args(self.datadir, self.socket, self.port, self.bind, self.performance_schema)
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

    def query(self, statement: str) -> list[tuple[object, ...]]:
        """Rows of one statement, as root over the unix socket."""
        conn = pymysql.connect(unix_socket=str(self.socket), user="root")
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused server would never act on the signal
            self._proc.send_signal(sig)
            self._proc.wait(timeout=30)
        self._proc = None
