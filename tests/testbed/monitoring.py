"""The shipped monitoring files (packaging/monitoring): their PromQL expressions, the metric names they use, and
promtool to check them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "packaging" / "monitoring"
RULES = MONITORING / "vmesh-agent.rules.yml"
RULE_TESTS = MONITORING / "tests" / "vmesh-agent.rules.test.yml"
DASHBOARD = MONITORING / "vmesh-agent-dashboard.json"
SCRAPE_EXAMPLE = MONITORING / "prometheus-scrape.example.yml"
JOB = "vmesh-agent"

# Series Prometheus makes itself rather than scraping them.
SYNTHETIC = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"})
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                       "offset", "inf", "nan"})
# Grafana's variables, replaced by what they stand for in a plain PromQL expression.
_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


def alerts() -> list[dict[str, Any]]:
    """The alerting rules of the shipped rules file, as written."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def rule_expressions() -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for rule in alerts()}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in (board or dashboard())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def dashboard_expressions() -> dict[str, str]:
    """Panel targets as `title/refId` -> expression, Grafana's variables still in."""
    return {f"{p['title']}/{t['refId']}": t["expr"] for p in panels() for t in p.get("targets") or []}


def variable_queries() -> dict[str, str]:
    """The dashboard's query variables, as `label_values(SELECTOR, label)`: name -> SELECTOR."""
    found = {}
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {var['name']}: not label_values(selector, label): {query}"
        found[var["name"]] = match.group(1)
    return found


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus reads it: $__rate_interval a duration, any other variable a regex."""
    return _GRAFANA_VARIABLE.sub(".+", _GRAFANA_INTERVALS.sub("5m", expr))


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords, label names or values)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name not in _KEYWORDS:
            names.add(name)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Every metric name the rules, the dashboard's panels and its variables use -> where."""
    used: dict[str, set[str]] = {}
    sources = {**{f"rule {k}": v for k, v in rule_expressions().items()},
               **{f"panel {k}": v for k, v in dashboard_expressions().items()},
               **{f"variable {k}": v for k, v in variable_queries().items()}}
    for where, expr in sources.items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def served_names(exposition: str) -> set[str]:
    """Sample names in a /metrics body (text format 0.0.4 or OpenMetrics)."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool (package prometheus, installed by scripts/bootstrap); fails the test when missing."""
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError("promtool is not installed: run scripts/bootstrap (Debian package prometheus)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
