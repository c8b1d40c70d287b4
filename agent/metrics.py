"""Prometheus text exposition, without a global registry: each agent renders its own state when scraped.

Most figures are read from the components at scrape time (collector style); only API latencies are
recorded as they happen, in a histogram owned by the API server.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Labels = dict[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        self.samples.append((suffix, labels, value))
        return self


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {fam.help}")
        out.append(f"# TYPE {fam.name} {fam.kind}")
        out.extend(f"{fam.name}{suffix}{_labels(labels)} {_number(value)}" for suffix, labels, value in fam.samples)
    return "\n".join(out) + "\n"


class Histogram:
    """A labelled histogram of observations (seconds), for latencies."""

    def __init__(self, buckets: Sequence[float] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)):
        self.buckets = tuple(buckets)
        self._series: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}

    def observe(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, totals = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        totals[0] += seconds

    def family(self, name: str, help: str) -> Family:
        fam = Family(name, "histogram", help)
        for key, (counts, totals) in sorted(self._series.items()):
            labels = dict(key)
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                fam.add(running, "_bucket", **labels, le=_number(bound))
            fam.add(totals[0], "_sum", **labels)
            fam.add(running, "_count", **labels)
        return fam
