"""Health: rise/fall sequencing on a fake clock with a scripted check; credentials files; pure helpers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from agent.health.build import build_check
from agent.health.checks import CheckResult, describe_server, last_line, short
from agent.health.credentials import CredentialsError
from agent.health.credentials import load_credentials as load
from agent.health.monitor import CRITICAL, PASSING, HealthMonitor, Status
from tests.unit.fakes import FakeClock

PASSWORD = "s3cret-Pa55"


class ScriptedCheck:
    """Returns the scripted results in order; then blocks, so that run() can be watched and cancelled."""

    def __init__(self, clock: FakeClock, script: Iterable[bool], duration: float = 0.0) -> None:
        self.clock = clock
        self.script = list(script)
        self.duration = duration
        self.started: list[float] = []
        self.exhausted = asyncio.Event()

    async def __call__(self) -> CheckResult:
        if not self.script:
            self.exhausted.set()
            await asyncio.Event().wait()
        self.started.append(self.clock.now)
        self.clock.now += self.duration
        ok = self.script.pop(0)
        return CheckResult(ok=ok, output="ok" if ok else "connection refused", duration=self.duration)


def monitor(script: Iterable[bool], *, rise: int = 2, fall: int = 2, interval: float = 1.0, duration: float = 0.0
            ) -> tuple[HealthMonitor, ScriptedCheck, FakeClock, list[Status]]:
    clock = FakeClock(100.0)
    check = ScriptedCheck(clock, script, duration)
    changes: list[Status] = []
    m = HealthMonitor(check, interval=interval, rise=rise, fall=fall, on_change=changes.append,
                      sleep=clock.sleep, clock=clock)
    return m, check, clock, changes


async def statuses(m: HealthMonitor, n: int) -> list[Status]:
    seen = []
    for _ in range(n):
        await m.check_once()
        seen.append(m.status)
    return seen


async def run_script(m: HealthMonitor, check: ScriptedCheck) -> None:
    task = asyncio.create_task(m.run())
    await check.exhausted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_critical_before_any_result_then_first_success_passes_at_once() -> None:
    m, _, _, changes = monitor([True], rise=3)
    assert m.status == CRITICAL
    assert m.last_result is None
    assert await statuses(m, 1) == [PASSING]  # rise does not apply to the very first result
    assert changes == [PASSING]


async def test_first_failure_stays_critical_and_then_rise_applies() -> None:
    m, _, _, changes = monitor([False, True, True])
    assert await statuses(m, 3) == [CRITICAL, CRITICAL, PASSING]
    assert changes == [PASSING]


async def test_flapping_does_not_flip() -> None:
    m, _, _, changes = monitor([True, False, True, False, True, False, True])
    assert await statuses(m, 7) == [PASSING] * 7
    assert changes == [PASSING]
    assert (m.checks, m.failures) == (7, 3)


async def test_fall_consecutive_failures_flip_to_critical_and_rise_successes_flip_back() -> None:
    m, _, clock, changes = monitor([True, False, False, False, True, False, True, True, True], rise=2, fall=2)
    seen = []
    for _ in range(9):
        await m.check_once()
        seen.append(m.status)
        clock.now += 1
    assert seen == [PASSING, PASSING, CRITICAL, CRITICAL, CRITICAL, CRITICAL, CRITICAL, PASSING, PASSING]
    assert changes == [PASSING, CRITICAL, PASSING]  # on_change exactly at the flips
    assert m.last_change == 100.0 + 7  # the 8th check (index 7) flipped it
    assert m.consecutive_successes == 3
    assert m.last_result == CheckResult(ok=True, output="ok", duration=0.0)


async def test_fall_of_three() -> None:
    m, _, _, changes = monitor([True, False, False, True, False, False, False], fall=3)
    assert await statuses(m, 7) == [PASSING] * 6 + [CRITICAL]
    assert changes == [PASSING, CRITICAL]


async def test_a_failure_while_passing_is_confirmed_after_half_an_interval() -> None:
    m, check, clock, _ = monitor([True, True, False, False, False, True, True, True], interval=1.0)
    await run_script(m, check)
    # passing: 1s; failure while passing: 0.5s; critical (failing or recovering): 1s; passing again: 1s.
    assert clock.sleeps == [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [t - 100 for t in check.started] == [0, 1, 2, 2.5, 3.5, 4.5, 5.5, 6.5]


async def test_killed_server_is_critical_within_one_and_a_half_intervals() -> None:
    # Worst case: the server dies just after a successful check.
    clock = FakeClock(100.0)
    check = ScriptedCheck(clock, [True, False, False])
    flipped_at: list[float] = []
    m = HealthMonitor(check, interval=1.0, fall=2, on_change=lambda status: flipped_at.append(clock.now),
                      sleep=clock.sleep, clock=clock)
    await run_script(m, check)
    killed_at = check.started[0]
    assert m.status == CRITICAL
    assert flipped_at[-1] - killed_at == 1.5


async def test_the_interval_runs_start_to_start() -> None:
    m, check, clock, _ = monitor([True, True, False], interval=1.0, duration=0.25)
    await run_script(m, check)
    assert clock.sleeps == [0.75, 0.75, 0.25]
    assert [t - 100 for t in check.started] == [0, 1, 2]


async def test_a_check_slower_than_the_interval_runs_again_at_once() -> None:
    m, check, clock, _ = monitor([True, True], interval=1.0, duration=3.0)
    await run_script(m, check)
    assert clock.sleeps == [0.0, 0.0]


def test_bad_thresholds_are_refused() -> None:
    async def never() -> CheckResult:
        raise AssertionError

    with pytest.raises(ValueError, match="interval"):
        HealthMonitor(never, interval=0)
    with pytest.raises(ValueError, match="rise and fall"):
        HealthMonitor(never, interval=1, fall=0)


def write(tmp_path: Path, text: str, mode: int) -> str:
    path = tmp_path / "mysql-check.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


GOOD = f'user = "ratings"\npassword = "{PASSWORD}"\n'


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o660])
def test_credentials_readable_by_owner_and_group_are_accepted(tmp_path: Path, mode: int) -> None:
    creds = load(write(tmp_path, GOOD, mode))
    assert (creds.user, creds.password) == ("ratings", PASSWORD)
    assert PASSWORD not in repr(creds)
    assert PASSWORD not in str(creds)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601, 0o666])
def test_credentials_accessible_by_others_are_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, GOOD, mode)
    with pytest.raises(CredentialsError, match=r"accessible by others .*chmod o-rwx") as caught:
        load(path)
    assert f"{mode:04o}" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)


@pytest.mark.parametrize(("text", "problem"), [
    (f'user = "ratings"\npassword = "{PASSWORD}\n', "not valid TOML"),  # unterminated string
    (f'user = "ratings"\npasswd = "{PASSWORD}"\n', "unknown key 'passwd'"),
    (f'password = "{PASSWORD}"\n', "user must be a non-empty string"),
    ('user = "ratings"\npassword = 1234\n', "password must be a string"),
    (b"\xff\xfe".decode("latin-1") + PASSWORD, "not valid TOML"),
])
def test_bad_credentials_files_say_why_without_the_password(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        load(write(tmp_path, text, 0o600))
    message = str(caught.value)
    assert problem in message
    assert PASSWORD not in message
    assert "1234" not in message
    assert caught.value.__cause__ is None
    assert "\n" not in message


def test_missing_credentials_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"cannot read credentials file .*No such file"):
        load(str(tmp_path / "absent.toml"))


def test_credentials_error_is_a_value_error() -> None:
    assert issubclass(CredentialsError, ValueError)


def test_mysql_check_repr_hides_the_password(tmp_path: Path) -> None:
    check = build_check("mysql", "127.0.0.1", 3306, timeout=1, credentials_file=write(tmp_path, GOOD, 0o600))
    assert "ratings" in repr(check)
    assert PASSWORD not in repr(check)
    assert PASSWORD not in str(check)


def test_result_repr_is_its_fields() -> None:
    result = CheckResult(ok=False, output="HTTP 503", duration=0.25)
    assert repr(result) == "CheckResult(ok=False, output='HTTP 503', duration=0.25, definite=False)"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "ping"}, "unknown check type 'ping'; use one of tcp, mysql, http, exec"),
    ({"kind": "exec"}, "exec check: command is required"),
    ({"kind": "tcp", "port": 0}, "tcp check: 0 is not a TCP port"),
    ({"kind": "tcp", "timeout": 0}, "check timeout must be longer than zero"),
    ({"kind": "http", "path": "health"}, "http check: path 'health' must start with '/'"),
    ({"kind": "tcp", "path": "/health"}, "tcp check: path applies only to http checks"),
    ({"kind": "tcp", "command": ["true"]}, "tcp check: command applies only to exec checks"),
    ({"kind": "http", "credentials_file": "/x"}, "http check: credentials_file applies only to mysql checks"),
])
def test_build_check_refuses_in_one_line(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"kind": "tcp", "host": "127.0.0.1", "port": 3306, "timeout": 1.0} | kwargs
    with pytest.raises(ValueError) as caught:
        build_check(**args)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_build_check_makes_each_kind() -> None:
    assert build_check("tcp", "127.0.0.1", 1, timeout=1).kind == "tcp"
    assert build_check("mysql", "127.0.0.1", 1, timeout=1).kind == "mysql"
    assert build_check("http", "::1", 1, timeout=1, path="/ready").url == "http://[::1]:1/ready"  # type: ignore[attr-defined]
    assert build_check("exec", "", 0, timeout=1, command=["true"]).kind == "exec"


@pytest.mark.parametrize(("version", "described"), [
    ("5.5.5-10.11.19-MariaDB-0+deb12u1", "MariaDB 10.11.19"),
    ("11.4.2-MariaDB-ubu2404", "MariaDB 11.4.2"),
    ("8.0.36-0ubuntu0.22.04.1", "MySQL 8.0.36"),
    ("8.4.0", "MySQL 8.4.0"),
])
def test_describe_server(version: str, described: str) -> None:
    assert describe_server(version) == described


def test_last_line_and_short() -> None:
    assert last_line(b"starting\nerror: disk full\n\n") == "error: disk full"
    assert last_line(b"") == ""
    assert last_line(b"\xff\xfe bad bytes\n") == "\ufffd\ufffd bad bytes"
    assert short("x" * 300) == "x" * 199 + "…"
    assert short("two\nlines") == "two lines"
