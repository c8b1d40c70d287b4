"""What a reload takes from the config file (agent/daemon/reload.py), and what it keeps until a restart."""

from __future__ import annotations

from pathlib import Path

import structlog
from structlog.testing import capture_logs

from agent.config import load_settings
from agent.daemon.reload import reread


def config(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "token").write_text("t")
    path = tmp_path / "config.toml"
    path.write_text(f'vm_name = "vm-a"\nstate_dir = "{tmp_path}"\n[cluster]\nserver = "https://10.0.0.1:6443"\n'
                    f'token_file = "{tmp_path / "token"}"\n{extra}')
    return path


def test_a_reload_takes_the_checks_and_keeps_what_needs_a_restart(tmp_path: Path) -> None:
    running = load_settings(str(config(tmp_path, "")))
    path = config(tmp_path, '[discovery]\ninterval = "7s"\n')
    path.write_text(path.read_text().replace('vm_name = "vm-a"', 'vm_name = "vm-b"'))
    with capture_logs() as logs:
        new = reread(str(path), running, structlog.get_logger())
    assert new is not None
    assert new.discovery.interval == 7.0
    assert new.vm_name == "vm-a", "a VM's name changes only on a restart"
    assert [(e["event"], e.get("keys")) for e in logs] == [
        ("these settings change only on restart; kept the running values", ["vm_name"])]


def test_an_invalid_file_changes_nothing_and_says_why(tmp_path: Path) -> None:
    running = load_settings(str(config(tmp_path, "")))
    path = config(tmp_path, '[discovery]\ninterval = "soon"\n')
    with capture_logs() as logs:
        assert reread(str(path), running, structlog.get_logger()) is None
    assert logs[0]["event"] == "reload rejected; keeping the running config"
    assert "discovery.interval" in logs[0]["error"]
