"""A real Prometheus server (Debian's package prometheus) for the tests: on loopback inside a simulated VM's network
namespace, scraping that VM's agent every second and evaluating the shipped rules every second."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from tests.testbed.monitoring import JOB
from tests.testbed.waiting import terminate, wait_until

INTERVAL = "1s"


class Prometheus:
    def __init__(self, workdir: Path, netns: str, port: int, targets: list[str], rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.netns = netns
        self.port = port
        self.targets = targets
        self.rule_files = rule_files
        self.log = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("prometheus is not installed: run scripts/bootstrap (Debian package prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }))
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, binary, f"--config.file={config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=info"],
                stdout=log, stderr=log)
        wait_until(self._ready, 30, "prometheus ready")

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self._proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
        return self._get("/-/ready")[0] == 200

    def _get(self, path: str) -> tuple[int, str]:
        # Its port is on the VM's loopback: curl from inside the namespace.
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5",
             f"http://127.0.0.1:{self.port}{path}"],
            capture_output=True, text=True, timeout=20, check=False)
        body, _, code = result.stdout.rpartition("\n")
        return int(code or 0), body

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH: its `data`."""
        code, body = self._get(f"/api/v1/{path}" + (f"?{urlencode(params)}" if params else ""))
        assert code == 200, f"prometheus /api/v1/{path}: {code} {body[:500]}"
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts called `name`."""
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        if self._proc is None:
            return
        terminate(self._proc)
        self._proc = None
