"""Phase 2, steady state: after the settle time, a window's deltas of the apiserver's /metrics, the bench's
own watch of the Leases (renewals), CPU, RSS and connections, per VM."""

from __future__ import annotations

import collections
import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from _common import rss_bytes

from .admin import Admin, leases_path
from .constants import READS, SLOT_PREFIX, WRITES
from .errors import SetupError, _log
from .figures import Steady
from .fleet import Fleet
from .metrics import parse_metrics
from .processes import established_to
from .snapshot import Snapshot, take_snapshot
from .spawn import cpu_so_far
from .testbed import Testbed


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass
class Scrape:
    at: float
    requests: dict[tuple[str, str], float]  # (verb, resource) -> count, agent resources only
    watch_events: float
    watch_bytes: float
    open_watches: float
    cpu: dict[str, float]


def scrape(bed: Testbed, fleet: Fleet) -> Scrape:
    assert bed.admin is not None
    at = time.monotonic()
    requests, events, size, watches = parse_metrics(bed.admin.text("/metrics", timeout=30.0))
    return Scrape(at, requests, events, size, watches, cpu_so_far(fleet))


class LeaseCounter(threading.Thread):
    """The bench's own watch of the namespace's Leases: renewals per VM Lease and per slot Lease. Its events
    are subtracted from the apiserver's watch event count."""

    def __init__(self, admin: Admin, namespace: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.admin, self.namespace, self.seconds = admin, namespace, seconds
        self.watching = threading.Event()
        self.window: tuple[float, float] = (math.inf, math.inf)
        self.modified: collections.Counter[str] = collections.Counter()
        self.events_in_window = 0
        self.error = ""

    def run(self) -> None:
        try:
            _, version = self.admin.list(leases_path(self.namespace))
            query = urllib.parse.urlencode({"watch": "true", "resourceVersion": version,
                                            "timeoutSeconds": str(int(self.seconds) + 5)})
            with self.admin.open(f"{leases_path(self.namespace)}?{query}",
                                 timeout=self.seconds + 30) as response:
                self.watching.set()
                for raw in response:
                    now = time.monotonic()
                    if not self.window[0] <= now <= self.window[1]:
                        continue
                    self.events_in_window += 1
                    event = json.loads(raw)
                    if event.get("type") == "MODIFIED":
                        self.modified[str(event["object"]["metadata"]["name"])] += 1
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            self.error = str(exc)
        finally:
            self.watching.set()


def phase_steady(bed: Testbed, fleet: Fleet, window: float, settle: float) -> Steady:
    assert bed.admin is not None
    _log(f"{fleet.label}: settling {settle:.0f}s, then a {window:.0f}s steady-state window")
    time.sleep(settle)
    fleet.check()
    counter = LeaseCounter(bed.admin, fleet.namespace, window)
    counter.start()
    counter.watching.wait(30)
    before = scrape(bed, fleet)
    counter.window = (before.at, before.at + window)
    time.sleep(window)
    after = scrape(bed, fleet)
    pids = fleet.pids()
    connections = established_to(pids[0], bed.gateway, bed.api_port) if pids else 0
    rss = sum(rss_bytes(pid) for pid in pids)
    snap = take_snapshot(bed.admin, fleet.namespace, fleet.backend)
    fleet.check()
    if counter.error:
        raise SetupError(f"{fleet.label}: the bench's own lease watch failed: {counter.error}")
    return steady_figures(fleet, before, after, counter, snap=snap, connections=connections, rss=rss)


def steady_figures(fleet: Fleet, before: Scrape, after: Scrape, counter: LeaseCounter, *, snap: Snapshot,
                   connections: int, rss: int) -> Steady:
    n, span = fleet.vms, after.at - before.at
    delta = {k: v - before.requests.get(k, 0.0) for k, v in after.requests.items()}
    per_vm_s = {k: v / n / span for k, v in delta.items() if v > 0}
    renewals = [counter.modified[f"vmesh-{vm}"] for vm in fleet.expected()]
    watch_events = after.watch_events - before.watch_events - counter.events_in_window
    steady = Steady(
        tree=str(fleet.tree), window_s=span, vms=n,
        reads_per_vm_s=sum(v for (verb, _), v in per_vm_s.items() if verb in READS),
        writes_per_vm_s=sum(v for (verb, _), v in per_vm_s.items() if verb in WRITES),
        watch_requests_per_vm_s=sum(v for (verb, _), v in delta.items() if verb == "WATCH") / n / span,
        watch_events_per_s=watch_events / span,
        watch_events_per_vm_s=watch_events / span / n,
        watch_mb_per_s=(after.watch_bytes - before.watch_bytes) / span / 1e6,
        lease_renewals_per_vm_s=mean([float(r) for r in renewals]) / span,
        renewals_min_max=(min(renewals, default=0), max(renewals, default=0)),
        slots=len(snap.slots),
        slot_renewals_per_s=sum(c for name, c in counter.modified.items()
                                if name.startswith(SLOT_PREFIX)) / span,
        apiserver_cpu=100 * (after.cpu["kube-apiserver"] - before.cpu["kube-apiserver"]) / span,
        etcd_cpu=100 * (after.cpu["etcd"] - before.cpu["etcd"]) / span,
        agents_cpu=100 * (after.cpu["agents"] - before.cpu["agents"]) / span,
        rss_per_vm_mb=rss / n / 1e6,
        connections_per_vm=connections / n,
        open_watches_per_vm=after.open_watches / n,
        by_request={f"{verb} {res}": round(v, 4) for (verb, res), v in sorted(per_vm_s.items())},
    )
    _log(f"{fleet.label}: reads {steady.reads_per_vm_s:.4f}/VM/s, writes {steady.writes_per_vm_s:.4f}/VM/s, "
         f"watch events {steady.watch_events_per_vm_s:.3f}/VM/s, apiserver CPU {steady.apiserver_cpu:.0f}%")
    return steady
