"""The apiserver's own /metrics text, parsed: the spawn's counters (every request, the priority and fairness
queue waits) and the steady state's (the agents' resources, watch events, open watches). Pure."""

from __future__ import annotations

import collections
import re

from .constants import AGENT_RESOURCES

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def spawn_counters(text: str) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """From the apiserver's /metrics: requests by "VERB resource[/subresource]", and the priority and fairness
    queue wait (sum, count) by priority level."""
    requests: dict[str, float] = collections.defaultdict(float)
    waits: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name = match["name"]
        if name == "apiserver_request_total":
            labels = dict(_LABEL.findall(match["labels"]))
            what = labels.get("resource", "") + (f"/{labels['subresource']}"
                                                 if labels.get("subresource") else "")
            requests[f"{labels.get('verb', '')} {what}"] += float(match["value"])
        elif name in ("apiserver_flowcontrol_request_wait_duration_seconds_sum",
                      "apiserver_flowcontrol_request_wait_duration_seconds_count"):
            level = dict(_LABEL.findall(match["labels"])).get("priority_level", "")
            waits[level][name.endswith("_count")] += float(match["value"])
    return dict(requests), {level: (s, n) for level, (s, n) in waits.items()}


def parse_metrics(text: str) -> tuple[dict[tuple[str, str], float], float, float, float]:
    requests: dict[tuple[str, str], float] = collections.defaultdict(float)
    events = size = watches = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, value = match["name"], float(match["value"])
        if name not in ("apiserver_request_total", "apiserver_watch_events_total",
                        "apiserver_watch_events_sizes_sum", "apiserver_longrunning_requests"):
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if name == "apiserver_watch_events_total":
            events += value
        elif name == "apiserver_watch_events_sizes_sum":
            size += value
        elif labels.get("resource") in AGENT_RESOURCES and not labels.get("subresource"):
            if name == "apiserver_request_total":
                requests[labels.get("verb", ""), labels["resource"]] += value
            elif labels.get("verb") == "WATCH":
                watches += value
    return dict(requests), events, size, watches
