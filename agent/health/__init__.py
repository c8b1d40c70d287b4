"""Per-service health: checks (tcp, mysql, http, exec) and a monitor that applies rise/fall thresholds."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

from agent.check_credentials import Credentials, CredentialsError, load_credentials
from agent.health.checks import BrokenCheck, Check, CheckResult, ExecCheck, HttpCheck, MysqlCheck, TcpCheck
from agent.health.monitor import CRITICAL, PASSING, HealthMonitor, Status

KINDS = ("tcp", "mysql", "http", "exec")

__all__ = [
    "CRITICAL", "KINDS", "PASSING", "BrokenCheck", "Check", "CheckResult", "Credentials", "CredentialsError",
    "HealthMonitor", "Status", "build_check", "load_credentials",
]


def build_check(kind: str, host: str, port: int, *, timeout: float, path: str = "/",
                command: Sequence[str] = (), credentials_file: str = "",
                executor: concurrent.futures.Executor | None = None) -> Check:
    """The check for one service; ValueError (one line) for an unknown kind or a missing/misplaced parameter.

    A credentials file is read here, once, so that a bad one is reported at start-up (or on reload). A mysql
    login check runs pymysql in `executor` (its own one-thread executor when None).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown check type {kind!r}; use one of {', '.join(KINDS)}")
    if not timeout > 0:
        raise ValueError(f"check timeout must be longer than zero, got {timeout!r}")
    if kind != "exec" and not 1 <= port <= 65535:
        raise ValueError(f"{kind} check: {port} is not a TCP port (1-65535)")
    if command and kind != "exec":
        raise ValueError(f"{kind} check: command applies only to exec checks")
    if credentials_file and kind != "mysql":
        raise ValueError(f"{kind} check: credentials_file applies only to mysql checks")
    if path != "/" and kind != "http":
        raise ValueError(f"{kind} check: path applies only to http checks")
    if kind == "tcp":
        return TcpCheck(host, port, timeout=timeout)
    if kind == "mysql":
        credentials = load_credentials(credentials_file) if credentials_file else None
        return MysqlCheck(host, port, timeout=timeout, credentials=credentials, executor=executor)
    if kind == "http":
        if not path.startswith("/"):
            raise ValueError(f"http check: path {path!r} must start with '/'")
        return HttpCheck(host, port, timeout=timeout, path=path)
    if not command:
        raise ValueError("exec check: command is required (a list: program and arguments)")
    return ExecCheck(command, timeout=timeout)
