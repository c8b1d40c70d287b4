"""bench/fleetbench: the pure parts (metrics parsing, the paced interval, snapshots, the table's rows) and the
worker entry, `bench/fleet --worker SPEC`, run against a fake agent tree. No cluster, no network namespace."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest
from fleetbench.admin import Admin, leases_path, slices_path
from fleetbench.budget import paced_interval, replaced_since
from fleetbench.figures import Figures, Reap, Run, Steady
from fleetbench.metrics import parse_metrics, spawn_counters
from fleetbench.reap import reap_leftovers
from fleetbench.rows import Row, _num, reap_rows, steady_rows, stop_rows
from fleetbench.snapshot import Slot, Snapshot, endpoint_problems, take_snapshot
from fleetbench.table import print_table, table_rows
from fleetbench.vms import CONFIG, vm_address, vm_name

from tests.unit.bench.conftest import BENCH

SCRIPT = BENCH / "fleet"

# -- names and addresses -------------------------------------------------------------------------------------


def test_vm_names_and_addresses_count_250_hosts_per_third_octet() -> None:
    assert [vm_name(i) for i in (0, 7, 1234)] == ["fleet-0", "fleet-7", "fleet-1234"]
    assert vm_address(0) == "198.19.0.1"
    assert vm_address(249) == "198.19.0.250"
    assert vm_address(250) == "198.19.1.1"
    assert vm_address(63999) == "198.19.255.250"  # the 64,000th VM, --vms's limit


# -- the apiserver's /metrics --------------------------------------------------------------------------------

SPAWN_METRICS = """\
# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",resource="leases",verb="GET"} 3
apiserver_request_total{code="200",resource="leases",verb="GET",version="v1"} 2
apiserver_request_total{code="201",resource="leases",subresource="",verb="POST"} 4
apiserver_request_total{code="201",resource="serviceaccounts",subresource="token",verb="POST"} 5
apiserver_flowcontrol_request_wait_duration_seconds_sum{flow_schema="a",priority_level="workload-low"} 1.5
apiserver_flowcontrol_request_wait_duration_seconds_count{flow_schema="a",priority_level="workload-low"} 3
apiserver_flowcontrol_request_wait_duration_seconds_sum{flow_schema="b",priority_level="workload-low"} 0.5
apiserver_flowcontrol_request_wait_duration_seconds_count{flow_schema="b",priority_level="workload-low"} 1
apiserver_flowcontrol_request_wait_duration_seconds_sum{priority_level="global-default"} 0.25
apiserver_flowcontrol_request_wait_duration_seconds_count{priority_level="global-default"} 5
apiserver_flowcontrol_request_wait_duration_seconds_bucket{le="0.1",priority_level="global-default"} 4
process_cpu_seconds_total 12.5
"""


def test_spawn_counters_sum_requests_by_verb_and_resource_and_waits_by_priority_level() -> None:
    requests, waits = spawn_counters(SPAWN_METRICS)
    assert requests == {"GET leases": 5.0, "POST leases": 4.0, "POST serviceaccounts/token": 5.0}
    assert waits == {"workload-low": (2.0, 4.0), "global-default": (0.25, 5.0)}


STEADY_METRICS = """\
apiserver_request_total{code="200",resource="leases",verb="PUT"} 10
apiserver_request_total{code="409",resource="leases",verb="PUT"} 2
apiserver_request_total{code="200",resource="leases",subresource="status",verb="PUT"} 7
apiserver_request_total{code="200",resource="endpointslices",verb="LIST"} 3
apiserver_request_total{code="200",resource="pods",verb="GET"} 100
apiserver_request_total{code="0",resource="leases",verb="WATCH"} 6
apiserver_watch_events_total{kind="Lease"} 40
apiserver_watch_events_total{kind="Pod"} 2
apiserver_watch_events_sizes_sum{kind="Lease"} 4096
apiserver_watch_events_sizes_count{kind="Lease"} 40
apiserver_longrunning_requests{resource="leases",scope="namespace",verb="WATCH"} 5
apiserver_longrunning_requests{resource="endpointslices",verb="WATCH"} 3
apiserver_longrunning_requests{resource="pods",verb="WATCH"} 9
apiserver_longrunning_requests{resource="leases",verb="LIST"} 1
"""


def test_parse_metrics_keeps_the_agents_resources_and_counts_every_watch_event() -> None:
    requests, events, size, watches = parse_metrics(STEADY_METRICS)
    assert requests == {("PUT", "leases"): 12.0, ("LIST", "endpointslices"): 3.0, ("WATCH", "leases"): 6.0}
    assert events == 42.0  # every kind: the agents' watches share the apiserver with everyone's
    assert size == 4096.0
    assert watches == 8.0  # open watches on the agents' resources only


# -- the budget phase ----------------------------------------------------------------------------------------


def test_paced_interval_at_issue_21s_shape() -> None:
    # 1,000 VMs, 2 slots, 50 writes/s: 0.9 x 50 - 2 slots x 2 writes / 5 s = 44.2 writes/s for 998 VMs.
    assert paced_interval(1000, 2, 50.0) == pytest.approx(22.5792, abs=1e-4)


@pytest.mark.parametrize(("vms", "slots", "budget", "interval"), [
    (10, 2, 50.0, 5.0),  # a small fleet: the configured 5 s, never faster
    (2, 4, 50.0, 5.0),  # more slots than VMs
    (2000, 0, 50.0, 2000 / 45),
    (5000, 0, 50.0, 100.0),  # capped: 300 s lease / 3
    (1000, 2, 1.0, 100.0),  # 0.1 writes/s left for 998 VMs: capped
    (1000, 2, 0.5, 100.0),  # nothing left after the slots: capped, not negative
])
def test_paced_interval_between_the_configured_and_the_longest(vms: int, slots: int, budget: float,
                                                                interval: float) -> None:
    assert paced_interval(vms, slots, budget) == pytest.approx(interval)


def test_replaced_since_names_the_expected_vms_whose_lease_or_slice_changed() -> None:
    first = Snapshot(leases={"fleet-0": "l0", "fleet-1": "l1", "fleet-9": "l9"},
                     slices={"fleet-0": "s0", "fleet-1": "s1", "fleet-9": "s9"})
    now = Snapshot(leases={"fleet-0": "l0", "fleet-1": "l1-new"}, slices={"fleet-0": "s0"})
    expected = {"fleet-0": vm_address(0), "fleet-1": vm_address(1)}  # fleet-9 was killed: not counted
    assert replaced_since(first, now, expected) == {"lease fleet-1", "slice fleet-1"}
    assert replaced_since(first, first, expected) == set()


# -- snapshots -----------------------------------------------------------------------------------------------


class FakeAdmin(Admin):
    """Answers json() from a dict by path (query dropped)."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def json(self, path: str, timeout: float = 10.0) -> dict[str, Any] | None:
        self.asked.append(path)
        return self.answers.get(path.partition("?")[0])


LEASES = {"items": [
    {"metadata": {"name": "vmesh-reaper-0"},
     "spec": {"holderIdentity": "fleet-3/m/b/42", "leaseDurationSeconds": 15}},
    {"metadata": {"name": "vmesh-reaper-1"}, "spec": {}},
    {"metadata": {"name": "vmesh-fleet-1", "uid": "u1", "labels": {"vmesh.dev/vm": "fleet-1"}},
     "spec": {"leaseDurationSeconds": 68}},
    {"metadata": {"name": "someone-else"}, "spec": {"leaseDurationSeconds": 10}},
]}


def test_take_snapshot_endpointslice_backend() -> None:
    admin = FakeAdmin({leases_path("ns"): LEASES, slices_path("ns"): {"items": [
        {"metadata": {"uid": "s1", "labels": {"vmesh.dev/vm": "fleet-1"}},
         "endpoints": [{"addresses": ["198.19.0.2"], "conditions": {"ready": True}},
                       {"addresses": ["198.19.0.9"], "conditions": {"ready": False}}]},
        {"metadata": {"uid": "x"},
         "endpoints": [{"addresses": ["198.19.0.5"], "conditions": {"ready": True}}]},
    ]}})
    snap = take_snapshot(admin, "ns", "endpointslice")
    assert snap.slots == {"vmesh-reaper-0": Slot("fleet-3", 15), "vmesh-reaper-1": Slot("", 0)}
    assert snap.leases == {"fleet-1": "u1"} and snap.lease_durations == {"fleet-1": 68}
    assert snap.slices == {"fleet-1": "s1"}
    assert snap.ready == ["198.19.0.2", "198.19.0.5"]
    assert "labelSelector=endpointslice.kubernetes.io%2Fmanaged-by%3Dvmesh-agent" in admin.asked[-1]


def test_take_snapshot_endpoints_backend_keeps_duplicate_addresses() -> None:
    admin = FakeAdmin({leases_path("ns"): LEASES, "/api/v1/namespaces/ns/endpoints/mysqldb": {"subsets": [
        {"addresses": [{"ip": "198.19.0.2"}, {"ip": "198.19.0.3"}]}, {"addresses": [{"ip": "198.19.0.2"}]}]}})
    snap = take_snapshot(admin, "ns", "endpoints")
    assert snap.ready == ["198.19.0.2", "198.19.0.3", "198.19.0.2"]
    assert snap.slices == {}


def test_endpoint_problems_one_ready_endpoint_per_vm_and_its_slice() -> None:
    expected = {"fleet-0": "198.19.0.1", "fleet-1": "198.19.0.2", "fleet-2": "198.19.0.3"}
    snap = Snapshot(slices={"fleet-0": "s0", "fleet-1": "s1"},
                    ready=["198.19.0.1", "198.19.0.2", "198.19.0.2"])
    assert endpoint_problems(snap, expected, "endpointslice") == [
        "fleet-1: 2 ready endpoints for 198.19.0.2", "fleet-2: 0 ready endpoints for 198.19.0.3",
        "fleet-2: no EndpointSlice"]
    assert endpoint_problems(snap, expected, "endpoints") == [
        "fleet-1: 2 ready endpoints for 198.19.0.2", "fleet-2: 0 ready endpoints for 198.19.0.3"]
    whole = Snapshot(slices={vm: "s" for vm in expected}, ready=list(expected.values()))
    assert endpoint_problems(whole, expected, "endpointslice") == []


def test_reap_leftovers_lists_what_is_left_of_the_killed_vms_only() -> None:
    snap = Snapshot(leases={"fleet-1": "l1", "fleet-5": "l5"}, slices={"fleet-1": "s1", "fleet-5": "s5"},
                    ready=["198.19.0.2", "198.19.0.2", "198.19.0.6"])
    killed = {"fleet-1": "198.19.0.2", "fleet-2": "198.19.0.3"}
    assert reap_leftovers(snap, killed) == ["lease fleet-1", "slice fleet-1", "address 198.19.0.2",
                                            "address 198.19.0.2"]
    assert reap_leftovers(Snapshot(leases={"fleet-5": "l5"}, ready=["198.19.0.6"]), killed) == []


# -- the table -----------------------------------------------------------------------------------------------


def test_num_formats_a_figure_and_says_never_for_none() -> None:
    assert _num(None) == "never"
    assert _num(None, ".2f", " s") == "never"
    assert _num(0.0) == "0.0"  # a figure of zero is a figure
    assert _num(1.26) == "1.3"
    assert _num(0.0456, ".2f", " s") == "0.05 s"


def _steady(**figures: Any) -> Steady:
    return Steady(tree="/tree", window_s=60.0, vms=100, **figures)


def test_steady_rows_judge_the_targets_and_show_the_baseline() -> None:
    run = Run(label="agent", tree="/tree", steady=_steady(
        reads_per_vm_s=0.04, writes_per_vm_s=0.23, lease_renewals_per_vm_s=0.2, renewals_min_max=(11, 13),
        slots=2, watch_events_per_vm_s=1.6))
    rows = {r.figure: r for r in steady_rows(run, _steady(reads_per_vm_s=0.05), held=True)}
    assert len(rows) == 14
    reads = rows["reads per VM per s (GET+LIST)"]
    assert (reads.value, reads.target, reads.ok, reads.baseline) == ("0.0400", "≤ 0.05", True, "0.0500")
    writes = rows["writes per VM per s"]  # 0.2 x 1.1 + 2 slots x 0.2 renewals / 100 VMs = 0.224
    assert (writes.value, writes.target, writes.ok) == ("0.2300", "≤ 0.2240", False)
    renewals = rows["Lease renewals per VM per s"]  # 1/5 s within 10 %
    assert (renewals.value, renewals.target, renewals.ok) == ("0.2000", "0.18..0.22", True)
    assert rows["  renewals per VM in the window, min/max"].value == "11 / 13"
    assert rows["  renewals per VM in the window, min/max"].ok is None
    events = rows["watch events per VM per s"]
    assert (events.value, events.ok) == ("1.600", False)
    not_held = steady_rows(run, None, held=False)
    assert all(r.ok is None and r.baseline == "" for r in not_held)


def _reap(**figures: Any) -> Reap:
    base: dict[str, Any] = {"killed_workers": [1], "killed_vms": 25, "slots": 2, "killed_slot_holders": 1,
                            "takeover_s": 3.0, "gone_s": 30.0, "leases_gone_s": 24.0,
                            "lease_duration_s": 15.0}
    return Reap(**{**base, **figures})


def test_reap_rows_a_surviving_slot_holder_adds_no_takeover_to_the_bound() -> None:
    rows = reap_rows(Run(label="agent", tree="/tree", reap=_reap()), held=True, vms=100)
    assert [(r.figure, r.value, r.target, r.ok) for r in rows] == [
        ("killed", "workers [1]: 25 VMs (25%), 1 of 2 slot holders", "", None),
        ("killed holders' slots taken over after", "3.0 s", "", None),
        ("killed VMs' Leases deleted by reapers after", "24.0 s", "≤ 25.0 s", True),  # 15 + 5 + 0 + 5
        ("  bound: lease + grace + takeover + slack", "15 + 5 + 0.0 + 5", "", None),
        ("their slices and ready addresses gone after", "30.0 s", "", None),
        ("  the garbage collector's part, after the last Lease", "6.0 s", "", None),
        ("live VMs whose Lease was replaced", "0", "0", True),
    ]


def test_reap_rows_every_holder_killed_the_takeover_counts_and_half_the_fleet_is_noted() -> None:
    reap = _reap(killed_slot_holders=2, leases_gone_s=None)
    rows = reap_rows(Run(label="agent", tree="/tree", reap=reap), held=True, vms=50)
    assert rows[1] == Row("reap", "  NOTE: 50% killed, not 25 %", "(--workers 4 or more)")
    by_figure = {r.figure: r for r in rows}
    leases = by_figure["killed VMs' Leases deleted by reapers after"]
    assert (leases.value, leases.target, leases.ok) == ("never", "≤ 28.0 s", False)  # 15 + 5 + 3 + 5
    assert by_figure["  bound: lease + grace + takeover + slack"].value == "15 + 5 + 3.0 + 5"
    assert by_figure["  the garbage collector's part, after the last Lease"].value == "-"


def test_stop_rows_judge_abandoned_clean_ups_and_what_is_left() -> None:
    run = Run(label="agent", tree="/tree", stop_s=2.5, left_after_stop="5 / 1 / 5",
              agent_log={"warning: clean-up abandoned at the deadline": 3, "error: other": 1})
    assert [(r.figure, r.value, r.target, r.ok) for r in stop_rows("stop", run)] == [
        ("SIGTERM to every worker exited", "2.5 s", "", None),
        ("clean-ups abandoned at the stop deadline", "3", "0", False),
        ("VM Leases / held slots / slices left at exit", "5 / 1 / 5", "", None),
        ("left 30 s after the exit", "5 / 1 / 5", "0 / 0 / 0", False),
    ]
    run.stop_clean_s, run.agent_log = 4.0, {}
    assert [(r.value, r.target, r.ok) for r in stop_rows("stop", run)][1:] == [
        ("0", "0", True), ("5 / 1 / 5", "", None), ("4.0 s", "≤ 30 s", True)]
    assert stop_rows("stop", Run(label="agent", tree="/tree")) == []


def test_only_the_endpointslice_backend_is_held_to_the_targets(capsys: pytest.CaptureFixture[str]) -> None:
    run = Run(label="agent", tree="/tree", steady=_steady(reads_per_vm_s=1.0, lease_renewals_per_vm_s=0.2),
              not_run="fleet not correct", stop_s=1.0, stop_clean_s=0.5)
    held = table_rows(Figures(vms=100, workers=4, backend="endpointslice", main=run))
    assert [(r.phase, r.figure) for r in held if r.ok is False] == [
        ("steady", "reads per VM per s (GET+LIST)"), ("not run", "the remaining phases")]
    figures = Figures(vms=100, workers=4, backend="endpoints", main=run)
    assert [r.phase for r in table_rows(figures) if r.ok is not None] == ["stop", "stop"]  # judged either way
    assert print_table(figures) is True
    out = capsys.readouterr().out
    assert "backend endpoints: figures reported, not held to the targets" in out
    assert out.rstrip().endswith("RESULT: PASS")
    figures.error = "set-up: no bridge"
    print_table(figures)
    assert capsys.readouterr().out.rstrip().endswith("RESULT: ERROR (set-up: no bridge)")


# -- the worker entry, against a fake agent tree -------------------------------------------------------------

FAKE_AGENT = {
    "agent/__init__.py": '__version__ = "0.0-fake"\n',
    "agent/config.py": '''
def parse_settings(text):
    if "$" in text:
        raise ValueError("not rendered: " + text)
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
''',
    "agent/logs.py": '''
def configure(*, format, level, stream):
    pass


def get_logger(**bound):
    return bound
''',
    "agent/daemon/__init__.py": "",
    "agent/daemon/agent.py": '''
import asyncio


class Agent:
    def __init__(self, settings, log):
        self.settings, self.log = settings, log
        self.should_exit = asyncio.Event()
        self.failure = ""

    async def start(self):
        if self.settings["vm_name"] == '"fleet-2"':
            raise RuntimeError(self.settings["address"])
        if self.settings["vm_name"] == '"fleet-1"':
            self.failure = "lost its Lease"
            self.should_exit.set()

    async def stop(self):
        await asyncio.sleep(0)
''',
    # Decoys: the worker must take these from the parent's bench/, never from the agent tree.
    "fleetbench/__init__.py": 'raise ImportError("fleetbench imported from the agent tree")\n',
    "_common.py": 'raise ImportError("_common imported from the agent tree")\n',
}


def _lines(stream: IO[str]) -> tuple[queue.Queue[str], threading.Thread]:
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return found, reader


def _event(lines: queue.Queue[str], reader: threading.Thread, proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The worker's next JSON line; fails at once when it exited without one, or after 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (reader.is_alive() or not lines.empty()):
        with contextlib.suppress(queue.Empty):
            event: dict[str, Any] = json.loads(lines.get(timeout=0.1))
            return event
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    assert proc.stderr is not None
    raise AssertionError(f"no report from the worker (exit {proc.returncode}); stderr: {proc.stderr.read()}")


def test_worker_entry_starts_reports_and_stops_agents_from_the_given_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name, text in FAKE_AGENT.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    # As Fleet.start writes it: the fleet-wide values filled, ${index} and ${address} left to the worker.
    template = string.Template(CONFIG + "\n[heartbeat]\nwrite_budget = 50.0\n").safe_substitute(
        namespace="fleet-abc123", backend="endpointslice", workdir=str(tmp_path / "agent"),
        server="https://198.18.0.1:6443", ca_file=str(tmp_path / "ca.crt"),
        token_file=str(tmp_path / "token"))
    spec = tmp_path / "worker-0.json"
    spec.write_text(json.dumps({"first": 1, "count": 3, "template": template, "tree": str(tree),
                                "log_level": "info"}))
    # PYTHONSAFEPATH: Python does not put bench/ first itself; only the entry script can, ahead of the decoys.
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1", PYTHONSAFEPATH="1")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--worker", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=tree, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    lines, reader = _lines(proc.stdout)
    try:
        started = _event(lines, reader, proc)
        assert started["event"] == "started"
        assert started["agent_file"] == str(tree / "agent" / "__init__.py")
        assert started["version"] == "0.0-fake" and started["pid"] == proc.pid
        assert started["failed"] == {"fleet-2": "RuntimeError('\"198.19.0.3\"')"}
        assert _event(lines, reader, proc) == {"event": "failed", "vm": "fleet-1", "why": "lost its Lease"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stopped = _event(lines, reader, proc)
        assert stopped["event"] == "stopped" and stopped["seconds"] >= 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)
        proc.stdout.close()
        proc.stderr.close()
