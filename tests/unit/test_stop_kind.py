"""The kind of stop: systemctl's output parsed on literal strings, the decision keep-or-deregister, the file
between the unit's ExecStop and the agent, and the config switch."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.cli import stop_command
from agent.config import ConfigError, parse_settings
from agent.stop_kind import (
    StopKind,
    ask_systemd,
    classify,
    forget_kind,
    job_type,
    read_kind,
    should_deregister,
    write_kind,
)

UNIT = "vmesh-agent.service"

# `systemctl list-jobs --no-legend --full --no-pager vmesh-agent.service` (systemd 252, Debian 12), run by the
# unit's ExecStop while `systemctl restart vmesh-agent` waits.
RESTART_JOB = "1042 vmesh-agent.service restart running\n"
STOP_JOB = "1120 vmesh-agent.service stop running\n"
# The same without --no-legend, at power-off: every unit has a stop job, the target a start job.
SHUTDOWN_JOBS = """\
JOB  UNIT                      TYPE  STATE
1290 poweroff.target           start waiting
1297 vmesh-agent.service       stop  running
1301 mariadb.service           stop  waiting
1293 systemd-poweroff.service  start waiting

4 jobs listed.
"""
NO_JOBS = "No jobs running.\n"
ANOTHER_UNITS_RESTART = "77 vmesh-agent-canary.service restart running\n88 mariadb.service restart waiting\n"


@pytest.mark.parametrize(("output", "expected"), [
    (RESTART_JOB, "restart"),
    (STOP_JOB, "stop"),
    (SHUTDOWN_JOBS, "stop"),
    (NO_JOBS, ""),
    ("", ""),
    (ANOTHER_UNITS_RESTART, ""),
    ("JOB UNIT TYPE STATE\n", ""),
])
def test_job_type_is_read_from_the_units_own_line(output: str, expected: str) -> None:
    assert job_type(output, UNIT) == expected


@pytest.mark.parametrize(("state", "job", "kind"), [
    ("running\n", "restart", StopKind.RESTART),
    ("degraded", "restart", StopKind.RESTART),
    ("running", "try-restart", StopKind.RESTART),
    ("running", "stop", StopKind.STOP),
    ("degraded", "stop", StopKind.STOP),
    ("stopping\n", "stop", StopKind.SHUTDOWN),
    ("stopping", "restart", StopKind.SHUTDOWN),  # the machine going down wins
    ("stopping", "", StopKind.SHUTDOWN),
    ("running", "", StopKind.UNKNOWN),  # a crash: ExecStop runs with no job
    ("", "", StopKind.UNKNOWN),  # systemctl could not be run or did not answer
    ("running", "start", StopKind.UNKNOWN),
])
def test_classify(state: str, job: str, kind: StopKind) -> None:
    assert classify(state, job) is kind


def test_ask_systemd_asks_the_two_questions_of_the_named_unit() -> None:
    asked: list[list[str]] = []

    def systemctl(args: list[str]) -> str:
        asked.append(args)
        return "running\n" if args == ["is-system-running"] else RESTART_JOB

    assert ask_systemd(UNIT, systemctl) == (StopKind.RESTART, "running", "restart")
    assert asked == [["is-system-running"], ["list-jobs", "--no-legend", "--full", "--no-pager", UNIT]]
    assert ask_systemd(UNIT, lambda args: "")[0] is StopKind.UNKNOWN


@pytest.mark.parametrize(("kind", "switch", "under_systemd", "failing", "deregister"), [
    # auto under systemd: a restart and the agent's own failure keep; a stop for good, a shutdown or no word
    # deregister, and an explicit stop wins over a failure.
    (StopKind.RESTART, "auto", True, False, False),
    (StopKind.RESTART, "auto", True, True, False),
    (StopKind.STOP, "auto", True, False, True),
    (StopKind.STOP, "auto", True, True, True),
    (StopKind.SHUTDOWN, "auto", True, False, True),
    (StopKind.UNKNOWN, "auto", True, False, True),
    (StopKind.UNKNOWN, "auto", True, True, False),
    # auto outside systemd: as before, always.
    (StopKind.RESTART, "auto", False, False, True),
    (StopKind.UNKNOWN, "auto", False, True, True),
    # the switch's two fixed answers.
    (StopKind.RESTART, "always", True, False, True),
    (StopKind.UNKNOWN, "always", True, True, True),
    (StopKind.STOP, "never", True, False, False),
    (StopKind.SHUTDOWN, "never", False, False, False),
])
def test_should_deregister(kind: StopKind, switch: str, under_systemd: bool, failing: bool, deregister: bool) -> None:
    assert should_deregister(kind, switch, under_systemd=under_systemd, failing=failing) is deregister


def test_the_file_carries_the_kind_readable_by_the_agent(tmp_path: Path) -> None:
    path = str(tmp_path / "stop-kind")
    assert read_kind(path) is StopKind.UNKNOWN  # no file: a stop for good
    assert read_kind("") is StopKind.UNKNOWN
    write_kind(path, StopKind.RESTART)
    assert read_kind(path) is StopKind.RESTART
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o644
    write_kind(path, StopKind.SHUTDOWN)  # replaced, not appended
    assert Path(path).read_text() == "shutdown\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stop-kind"]
    Path(path).write_text("restart please\n")
    assert read_kind(path) is StopKind.UNKNOWN
    forget_kind(path)
    assert not Path(path).exists()
    forget_kind(path)  # already gone: fine


def test_the_switch_defaults_to_auto_and_refuses_other_words() -> None:
    assert parse_settings('vm_name = "a"\n', require_cluster=False).sync.deregister_on_stop == "auto"
    for word in ("always", "never", "auto"):
        text = f'vm_name = "a"\n[sync]\nderegister_on_stop = "{word}"\n'
        assert parse_settings(text, require_cluster=False).sync.deregister_on_stop == word
    with pytest.raises(ConfigError, match=r"^sync\.deregister_on_stop: 'sometimes' is not one of auto, always, "
                                          r"never \(line 3\)$"):
        parse_settings('vm_name = "a"\n[sync]\nderegister_on_stop = "sometimes"\n', require_cluster=False)


def test_the_exec_stop_command_makes_a_restart_into_a_stop_when_the_next_start_would_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vmesh-agent stop-kind --config`: a restart whose config the next process would refuse (exit 78) never
    comes back, so the agent is told to deregister now. Always exit 0 (a failing ExecStop is only logged)."""
    monkeypatch.setattr(stop_command, "ask_systemd", lambda unit: (StopKind.RESTART, "running", "restart"))
    kind_file = tmp_path / "stop-kind"
    config = tmp_path / "config.toml"
    config.write_text('vm_name = "a"\n[cluster]\nkubeconfig = "/nonexistent"\n[heartbeat]\ninterval = "soon"\n')
    assert stop_command.main(["--write", str(kind_file), "--config", str(config)]) == 0
    assert read_kind(str(kind_file)) is StopKind.STOP
    assert "the config is invalid, the next start would fail: heartbeat.interval" in capsys.readouterr().out
    assert stop_command.main(["--write", str(kind_file)]) == 0  # no config to check: the restart stands
    assert read_kind(str(kind_file)) is StopKind.RESTART
    assert stop_command.main(["--write", str(tmp_path / "missing" / "stop-kind")]) == 0  # cannot write: said
    assert "cannot write" in capsys.readouterr().err
