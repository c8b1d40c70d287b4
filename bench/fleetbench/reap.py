"""Phase 4, the reap: workers SIGKILLed (a reaper slot holder among their VMs), and how soon the live agents
delete the killed VMs' Leases, and the garbage collector their slices."""

from __future__ import annotations

import math
import time

from .constants import POLL_S, REAP_CAP_S
from .errors import SetupError, _log
from .figures import Reap
from .fleet import Fleet, Worker
from .outage import wait_correct
from .rows import _num
from .snapshot import Snapshot, try_snapshot
from .vms import vm_address, vm_name


def choose_victims(fleet: Fleet, snap: Snapshot, all_holders: bool) -> tuple[list[Worker], str]:
    """Workers to kill: one holding a slot holder (all of them with all_holders), then more until ≥ 25 % of
    the VMs are among them; at least one worker stays alive to reap."""
    holders = [fleet.worker_of(slot.holder) for _, slot in sorted(snap.slots.items())]
    holding = [w for w in holders if w is not None and w in fleet.live()]
    note = ""
    if not snap.slots:
        note = "no slot leases (old release)"
        chosen = [fleet.workers[0]]
    elif not holding:
        note = f"slot holders {[s.holder for s in snap.slots.values()]} are not fleet VMs"
        chosen = [fleet.workers[0]]
    elif all_holders:
        chosen = list(dict.fromkeys(holding))
    else:  # one slot holder among the killed, and preferably a holder alive: the common case
        chosen = [min(holding, key=holding.count)]
    quota = math.ceil(fleet.vms / 4)
    for w in fleet.live():
        if sum(v.count for v in chosen) >= quota:
            break
        if w not in chosen:
            chosen.append(w)
    if len(chosen) >= len(fleet.live()):
        raise SetupError(f"killing workers {[w.index for w in chosen]} would leave no agent alive to reap; "
                         "use more --workers")
    return chosen, note


def reap_leftovers(snap: Snapshot, killed: dict[str, str]) -> list[str]:
    """What is left of the killed VMs (vm -> address): Leases, slices, ready addresses."""
    addresses = set(killed.values())
    return ([f"lease {vm}" for vm in killed if vm in snap.leases]
            + [f"slice {vm}" for vm in killed if vm in snap.slices]
            + [f"address {a}" for a in snap.ready if a in addresses])


def phase_reap(fleet: Fleet, all_holders: bool, cap: float) -> Reap:
    admin = fleet.bed.admin
    assert admin is not None
    snap = wait_correct(fleet, cap)
    victims, note = choose_victims(fleet, snap, all_holders)
    killed = {vm_name(i): vm_address(i) for w in victims for i in w.vms}
    dead_slots = {name for name, slot in snap.slots.items() if slot.holder in killed}
    reap = Reap(killed_workers=[w.index for w in victims], killed_vms=len(killed), slots=len(snap.slots),
                killed_slot_holders=len(dead_slots), note=note,
                lease_duration_s=float(max((snap.lease_durations.get(vm, 0) for vm in killed), default=0)
                                       or 15))
    _log(f"{fleet.label}: SIGKILL workers {reap.killed_workers} ({len(killed)} VMs, "
         f"{note or f'{len(dead_slots)} of {len(snap.slots)} slot holders'})")
    begin = time.monotonic()
    fleet.kill(victims)
    survivors = fleet.expected()
    replaced: set[str] = set()
    while time.monotonic() - begin < REAP_CAP_S:
        fleet.check()
        current = try_snapshot(admin, fleet.namespace, fleet.backend)
        now = time.monotonic()
        if current is not None:
            replaced |= {vm for vm in survivors if current.leases.get(vm) != snap.leases.get(vm)}
            if reap.takeover_s is None and dead_slots and all(
                    s in current.slots and current.slots[s].holder in survivors for s in dead_slots):
                reap.takeover_s = now - begin
            if reap.leases_gone_s is None and not any(vm in current.leases for vm in killed):
                reap.leases_gone_s = now - begin
            if reap.gone_s is None and not reap_leftovers(current, killed):
                reap.gone_s = now - begin
            if reap.gone_s is not None and (reap.takeover_s is not None or not dead_slots):
                break
        time.sleep(POLL_S)
    reap.live_reaped = len(replaced)
    _log(f"{fleet.label}: killed VMs' Leases deleted after {_num(reap.leases_gone_s, unit=' s')} (bound "
         f"{reap.bound_s:.1f} s), their objects gone after {_num(reap.gone_s, unit=' s')}, "
         f"slots taken over after {_num(reap.takeover_s, unit=' s')}, "
         f"{reap.live_reaped} live VMs' Leases replaced")
    return reap
