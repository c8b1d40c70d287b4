"""The figures: what each phase of a run measured (Spawn, Steady, Outage, Reap, Budget), a Run, the table's
Figures."""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import GRACE_S, REAP_SLACK_S, SLOT_RENEWALS_PER_S, TARGET_WRITES


@dataclass
class Spawn:
    ready_s: float | None = None  # every endpoint ready
    workers_started_s: float | None = None  # every worker reported all its agents started
    problems: list[str] = field(default_factory=list)
    # Where the spawn's time goes (issue 21, item 2): every request the apiserver served meanwhile, the
    # controllers' included, per VM by "VERB resource[/subresource]"; CPU in % of one core over the spawn; the
    # mean wait in priority and fairness queues, per priority level (s).
    requests_per_vm: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    queue_wait_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Steady:
    tree: str
    window_s: float
    vms: int
    reads_per_vm_s: float = 0.0
    writes_per_vm_s: float = 0.0
    watch_requests_per_vm_s: float = 0.0  # watches that ended (and were restarted) in the window
    watch_events_per_s: float = 0.0
    watch_events_per_vm_s: float = 0.0
    watch_mb_per_s: float = 0.0
    lease_renewals_per_vm_s: float = 0.0
    renewals_min_max: tuple[int, int] = (0, 0)  # per VM in the window
    slots: int = 0
    slot_renewals_per_s: float = 0.0
    apiserver_cpu: float = 0.0  # % of one core
    etcd_cpu: float = 0.0
    agents_cpu: float = 0.0
    rss_per_vm_mb: float = 0.0
    connections_per_vm: float = 0.0
    open_watches_per_vm: float = 0.0
    by_request: dict[str, float] = field(default_factory=dict)  # "VERB resource" -> per VM per s

    @property
    def writes_target(self) -> float:
        return TARGET_WRITES + self.slots * SLOT_RENEWALS_PER_S / self.vms


@dataclass
class Outage:
    component: str
    down_s: float
    live_vms: int = 0
    leases_deleted: int = 0
    slices_deleted: int = 0
    deleted_examples: list[str] = field(default_factory=list)
    first_correct_s: float | None = None  # after the component is back
    correct_from_s: float | None = None  # correct from then on, through the observation
    apiserver_ready_s: float | None = None
    observed_s: float = 0.0


@dataclass
class Reap:
    killed_workers: list[int] = field(default_factory=list)
    killed_vms: int = 0
    slots: int = 0
    killed_slot_holders: int = 0
    note: str = ""
    takeover_s: float | None = None  # every slot a killed VM held is held by a live VM
    gone_s: float | None = None
    leases_gone_s: float | None = None  # the reapers' part: every killed VM's Lease deleted (the slices
    # follow through kube-controller-manager's garbage collector)
    lease_duration_s: float = 15.0
    live_reaped: int = 0

    @property
    def takeover_counts(self) -> bool:
        """Reaping waits for a takeover only when no slot holder survived."""
        return self.slots > 0 and self.killed_slot_holders == self.slots

    @property
    def bound_s(self) -> float:
        takeover = (self.takeover_s or 0.0) if self.takeover_counts else 0.0
        return self.lease_duration_s + GRACE_S + takeover + REAP_SLACK_S


@dataclass
class Budget:
    budget: float  # heartbeat.write_budget, the fleet's Lease writes per s at most
    slots: int = 0
    interval_s: float = 0.0  # the interval the VMs without a slot should settle at (agent/lease/pace.py)
    duration_s: int = 0  # and the leaseDurationSeconds written with it
    settled_s: float | None = None  # after the spawn, every such VM's Lease carries it
    writes_per_s: float | None = None  # the fleet's Lease writes (VMs' and slots') over the steady window, as
    # the apiserver counts them
    live_replaced: int = 0  # live VMs' Leases or slices deleted or replaced from the spawn to the window's
    # end
    replaced_examples: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return (self.settled_s is not None and self.writes_per_s is not None
                and self.writes_per_s <= self.budget and self.live_replaced == 0)


@dataclass
class Run:
    label: str
    tree: str
    agent_file: str = ""
    policy: bool = True  # the admission policies on during this run
    write_budget: float = 0.0  # heartbeat.write_budget for this run's agents (0: the default)
    budget: Budget | None = None  # the budget phase's figures
    spawn: Spawn | None = None
    steady: Steady | None = None
    outages: list[Outage] = field(default_factory=list)
    reap: Reap | None = None
    stop_s: float | None = None
    left_after_stop: str = ""  # VM Leases / slots still held / slices in the namespace as the workers exit
    stop_clean_s: float | None = None  # from the workers' exit until nothing is left (None: not within
    # STOP_CLEAN_S)
    left_at_end: str = ""  # the same, STOP_CLEAN_S after the exit when something was still left
    not_run: str = ""  # why the phases after the last one measured were not run
    agent_log: dict[str, int] = field(default_factory=dict)


@dataclass
class Figures:
    vms: int
    workers: int
    backend: str
    main: Run
    baseline: Run | None = None
    paced: Run | None = None  # the budget phase's fleet
    error: str = ""
