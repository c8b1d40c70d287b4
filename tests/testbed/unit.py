"""A VM's agent run as the shipped systemd unit runs it: NOTIFY_SOCKET on a test socket standing in for systemd,
and `run --stop-kind-file`, where the test writes the kind of stop as the unit's ExecStop would."""

from __future__ import annotations

import signal
from pathlib import Path

from agent.stop_kind import StopKind, write_kind
from tests.testbed.notify import FakeSystemd
from tests.testbed.vm import VM
from tests.testbed.waiting import wait_until


class AgentUnit:
    def __init__(self, vm: VM, config: Path, *, under_systemd: bool = True) -> None:
        self.vm = vm
        self.config = config
        self.systemd = FakeSystemd(vm.workdir / "notify.sock") if under_systemd else None
        self.kind_file = vm.workdir / "run" / "stop-kind"
        self.kind_file.parent.mkdir(exist_ok=True)

    def start(self) -> int:
        env = {"NOTIFY_SOCKET": str(self.systemd.path)} if self.systemd else {}
        return self.vm.start_agent(self.config, env=env, args=("--stop-kind-file", str(self.kind_file))).pid

    def messages(self) -> list[str]:
        return self.systemd.drain() if self.systemd else []

    def stop(self, kind: StopKind | None) -> None:
        """What systemd does: ExecStop writes the kind (None: no ExecStop ran), then SIGTERM; the agent exits 0."""
        if kind is not None:
            write_kind(str(self.kind_file), kind)
        assert self.vm.stop_agent(signal.SIGTERM) == 0

    def restart(self, kind: StopKind = StopKind.RESTART, timeout: float = 30) -> int:
        """`systemctl restart`: stop with `kind`, start, and return once the new process sent READY=1."""
        assert self.systemd is not None
        ready = self.messages().count("READY=1")
        self.stop(kind)
        pid = self.start()
        wait_until(lambda: self.messages().count("READY=1") > ready, timeout, f"READY=1 from {self.vm.name}'s agent")
        return pid

    def close(self) -> None:
        if self.systemd is not None:
            self.systemd.close()
