"""The check for one service, by kind: the one place a configured check becomes a Check."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

from agent.health.checks import Check, ExecCheck, HttpCheck, MysqlCheck, TcpCheck, is_timeout
from agent.health.credentials import load_credentials
from agent.health.guard import GuardedCheck

KINDS = ("tcp", "mysql", "http", "exec")


def build_check(kind: str, host: str, port: int, *, timeout: float, path: str = "/",
                command: Sequence[str] = (), credentials_file: str = "",
                executor: concurrent.futures.Executor | None = None, interval: float = 1.0,
                active_interval: float = 0.0) -> Check:
    """The check for one service; ValueError (one line) for an unknown kind or a missing/misplaced parameter.

    A credentials file is read here, once, so that a bad one is reported at start-up (or on reload). A mysql
    login check runs pymysql in `executor` (its own one-thread executor when None).

    With `active_interval` longer than `interval`, the checks the server sees (the mysql login probe, an http
    GET, a tcp connect) run at most that often and on suspicion; the socket table is read every `interval`
    (agent/health/guard.py). A mysql check with credentials logs nothing and runs every time; so does exec.
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
        return _guarded(TcpCheck(host, port, timeout=timeout), host, port, interval, active_interval)
    if kind == "mysql":
        credentials = load_credentials(credentials_file) if credentials_file else None
        mysql = MysqlCheck(host, port, timeout=timeout, credentials=credentials, executor=executor)
        return _guarded(mysql, host, port, interval, active_interval) if credentials is None else mysql
    if kind == "http":
        if not path.startswith("/"):
            raise ValueError(f"http check: path {path!r} must start with '/'")
        return _guarded(HttpCheck(host, port, timeout=timeout, path=path), host, port, interval,
                        active_interval)
    if not command:
        raise ValueError("exec check: command is required (a list: program and arguments)")
    return ExecCheck(command, timeout=timeout)


def _guarded(check: Check, host: str, port: int, interval: float, active_interval: float) -> Check:
    if active_interval <= interval:
        return check
    return GuardedCheck(check, host, port, interval=interval, active_interval=active_interval,
                        timed_out=is_timeout)
