"""Token files, the renewal schedule and the refused-token guard, on injected clocks.

The in-memory TokenRequest API only orders the steps; the apiserver's own behaviour (minimum lifetime,
revocation, audiences) is in tests/integration/test_token_rotation.py.
"""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path
from typing import Any, cast

import pytest

from agent.cluster.account import Kind, check_account, judge
from agent.cluster.backoff import Backoff
from agent.cluster.credentials import CredentialGuard, rejection_message
from agent.cluster.errors import Forbidden, Unauthorized, Unavailable
from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_lease, lease_annotations, with_annotations
from agent.cluster.token_renewal import TokenRenewal, renewal_due
from agent.cluster.tokens import TokenFiles, parse_claims, write_token
from agent.logs import get_logger
from tests.unit import fakes
from tests.unit.fakes import FakeClock

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
DAY = 86400.0
SA = "system:serviceaccount:vm:vmesh-vm-a"


def jwt(sub: str = SA, iat: float = T0, exp: float | None = T0 + 30 * DAY, aud: Any = ("https://k8s",)) -> str:
    return fakes.jwt(sub, iat, exp, aud)


class Stop(Exception):
    pass


def files(tmp_path: Path, enrolled: str, clock: FakeClock) -> TokenFiles:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "token").write_text(enrolled)
    return TokenFiles([str(tmp_path / "etc" / "token"), str(tmp_path / "state" / "token")], clock=clock)


def renewal(tmp_path: Path, clock: FakeClock, enrolled: str, *, sleeps: list[float], max_sleeps: int = 50,
            fraction: float = 0.8, renewals: int = 0,
            skew: float = 0.0) -> tuple[TokenRenewal, fakes.FakeApi, TokenFiles]:
    """A renewal on a fake clock; its sleeps advance the clock, and the run stops after `max_sleeps` of them or
    once `renewals` tokens were asked for. `clock` is the apiserver's (it issues the tokens); the VM's wall clock
    is `skew` seconds ahead of it (behind when negative); the monotonic clock is the apiserver's, as it runs."""
    api = fakes.FakeApi(clock)

    def vm_clock() -> float:
        return clock() + skew

    tokens = files(tmp_path, enrolled, clock)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= max_sleeps or (renewals and len(api.requests) >= renewals):
            raise Stop
        clock.advance(seconds)

    r = TokenRenewal(cast(KubeClient, api), tokens, "vm", "vmesh-vm-a", fraction=fraction, log=get_logger(),
                     clock=vm_clock, monotonic=clock, sleep=sleep, backoff=Backoff(base=5, cap=300, jitter=0))
    return r, api, tokens


# -- claims and files ----------------------------------------------------------------------------------

def test_claims_are_read_without_verifying_and_garbage_is_none() -> None:
    claims = parse_claims(jwt(aud="https://k8s"))
    assert claims is not None
    assert claims.subject == SA and claims.audiences == ("https://k8s",)
    assert claims.lifetime == 30 * DAY and claims.service_account == ("vm", "vmesh-vm-a")
    assert not claims.expired(T0 + 30 * DAY - 1) and claims.expired(T0 + 30 * DAY)
    assert parse_claims("not-a-jwt") is None
    assert parse_claims("a.!!!.c") is None
    legacy = parse_claims(jwt(exp=None))  # a Secret-based token never expires
    assert legacy is not None and legacy.lifetime == 0 and not legacy.expired(T0 + 1000 * DAY)


def test_the_newest_valid_token_is_used_and_an_admins_fresh_one_takes_over(tmp_path: Path) -> None:
    clock = FakeClock(T0 + DAY)
    tokens = files(tmp_path, jwt(), clock)
    assert tokens.current().path.endswith("etc/token")
    renewed = jwt(iat=T0 + DAY, exp=T0 + 31 * DAY)
    write_token(tokens.renewed_path, renewed)
    assert tokens.current().value == renewed
    assert stat.S_IMODE(os.stat(tokens.renewed_path).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["token"], "no temporary file left"
    fresh = jwt(iat=T0 + 2 * DAY, exp=T0 + 32 * DAY)  # the admin re-enrolled the VM
    clock.advance(DAY)
    (tmp_path / "etc" / "token").write_text(fresh)
    assert tokens.current().value == fresh
    clock.advance(40 * DAY)  # everything expired: the newest is still the one sent, and refused by the server
    assert tokens.current().value == fresh


def test_a_renewal_issued_in_the_same_second_as_the_enrolled_token_is_used(tmp_path: Path) -> None:
    """iat has whole seconds: a renewal right after enrollment tied with the enrolled token, which won, so the agent
    renewed again 10 s later (seen on a clock-ahead VM in tests/integration/test_token_rotation.py)."""
    clock = FakeClock(T0)
    tokens = files(tmp_path, jwt(iat=T0, exp=T0 + DAY), clock)
    enrolled_at = os.stat(tmp_path / "etc" / "token").st_mtime - 1  # written a moment before the renewal
    os.utime(tmp_path / "etc" / "token", (enrolled_at, enrolled_at))
    renewed = jwt(iat=T0, exp=T0 + 30 * DAY)
    write_token(tokens.renewed_path, renewed)
    assert tokens.current().value == renewed


def test_an_expired_renewal_gives_way_to_a_valid_enrolled_token(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 20 * DAY)
    tokens = files(tmp_path, jwt(iat=T0, exp=T0 + 30 * DAY), clock)
    write_token(tokens.renewed_path, jwt(iat=T0 + DAY, exp=T0 + 2 * DAY))
    assert tokens.current().path.endswith("etc/token")


def test_a_token_file_that_turns_unreadable_keeps_the_token_read_before_and_says_why(tmp_path: Path) -> None:
    """Issue 20: a bundle unpacked as root over the enrolled token left it unreadable to the agent, and
    current() raised: the credentials and renewal loops died and the agent exited. (The test runs as root, for
    which no mode is unreadable: a directory in the file's place fails the read the same way.)"""
    clock = FakeClock(T0 + DAY)
    said: list[str] = []
    (tmp_path / "etc").mkdir()
    token_file = tmp_path / "etc" / "token"
    token_file.write_text(jwt())
    tokens = TokenFiles([str(token_file), str(tmp_path / "state" / "token")], clock=clock, warn=said.append)
    first = tokens.current()
    token_file.unlink()
    token_file.mkdir()
    assert tokens.current() == first and tokens.current() == first
    assert len(said) == 1 and f"cannot read the new token in {token_file}" in said[0], said
    assert f"chgrp vmesh-agent {token_file} && chmod 0640 {token_file}" in tokens.problem
    token_file.rmdir()
    fresh = jwt(iat=T0 + DAY, exp=T0 + 31 * DAY)
    token_file.write_text(fresh)  # fixed: the new token is read, the problem gone
    assert tokens.current().value == fresh and tokens.problem == ""


def test_an_unreadable_enrolled_file_at_start_gives_way_to_a_renewed_token(tmp_path: Path) -> None:
    clock = FakeClock(T0 + DAY)
    said: list[str] = []
    (tmp_path / "etc" / "token").mkdir(parents=True)
    tokens = TokenFiles([str(tmp_path / "etc" / "token"), str(tmp_path / "state" / "token")], clock=clock,
                        warn=said.append)
    with pytest.raises(IsADirectoryError):  # nothing readable at all: the enrolled file's own error
        tokens.current()
    assert tokens.current_or_none() is None  # for those that can wait: the loops, the API
    renewed = jwt(iat=T0 + DAY, exp=T0 + 31 * DAY)
    write_token(tokens.renewed_path, renewed)
    assert tokens.current().value == renewed
    assert said and "using the token in" in said[0]


def test_a_renewal_of_another_account_is_not_used_and_a_refused_token_gives_way(tmp_path: Path) -> None:
    """Issue 20: the newest token by iat won even when it was another VM's (a golden image captured after its
    template VM renewed its token) or refused by the cluster."""
    clock = FakeClock(T0 + DAY)
    said: list[str] = []
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "token").write_text(enrolled := jwt())
    tokens = TokenFiles([str(tmp_path / "etc" / "token"), str(tmp_path / "state" / "token")], clock=clock,
                        warn=said.append)
    write_token(tokens.renewed_path, jwt(sub="system:serviceaccount:vm:vmesh-vm-template", iat=T0 + DAY / 2))
    assert tokens.current().value == enrolled
    assert said and "a token of system:serviceaccount:vm:vmesh-vm-template, while" in said[0], said
    renewed = jwt(iat=T0 + DAY / 2)  # its own renewal, newer: used, until the cluster refuses it
    write_token(tokens.renewed_path, renewed)
    assert tokens.current().value == renewed
    tokens.refuse(renewed)
    assert tokens.current().value == enrolled
    tokens.refuse(enrolled)  # both refused: the newest again, and the guard waits for a new one
    assert tokens.current().value == renewed


# -- the renewal schedule --------------------------------------------------------------------------------

async def test_renewed_at_the_fraction_of_its_life_with_its_audience_and_lifetime(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sleeps: list[float] = []
    r, api, tokens = renewal(tmp_path, clock, jwt(aud=("aud-1", "aud-2")), sleeps=sleeps, max_sleeps=10**6,
                             renewals=1)
    with pytest.raises(Stop):
        await r.run()
    assert api.requests, "renewed"
    first_at = T0 + 0.8 * 30 * DAY
    assert api.requests[0] == ("vm", "vmesh-vm-a", ["aud-1", "aud-2"], int(30 * DAY))
    assert all(s <= 60 for s in sleeps), "waits are cut into pieces: a suspended VM is noticed"
    assert first_at <= T0 + sum(sleeps[:-1]) < first_at + 1, "not before 80 % of its life, nor later"
    claims = tokens.current().claims
    assert claims is not None and claims.issued_at >= first_at and tokens.current().path == tokens.renewed_path
    assert r.next_renewal == claims.issued_at + 0.8 * 30 * DAY


async def test_each_renewal_schedules_the_next_from_the_new_token(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sleeps: list[float] = []
    r, api, _ = renewal(tmp_path, clock, jwt(exp=T0 + 600), sleeps=sleeps, max_sleeps=30, fraction=0.05)
    with pytest.raises(Stop):
        await r.run()
    # Every 30 s of a 600 s token; 30 pieces of at most 60 s → 29 renewals at 30 s each after the first.
    assert len(api.requests) >= 10 and all(req[3] == 600 for req in api.requests)
    assert r.renewals == len(api.requests)


@pytest.mark.parametrize("skew", [50 * 60.0, 3 * 3600.0, -30 * 60.0, -5 * 3600.0])
async def test_a_skewed_vm_clock_renews_on_schedule_not_in_a_storm_nor_too_late(tmp_path: Path, skew: float) -> None:
    """Issue 20: with a 1 h token and the VM's clock 50 min ahead, every new token was already due: 1,014
    TokenRequests in 2 s. Behind by more than 12 min, the token expired before its renewal."""
    clock = FakeClock(T0)
    sleeps: list[float] = []
    r, api, _ = renewal(tmp_path, clock, jwt(exp=T0 + 3600), sleeps=sleeps, max_sleeps=10**6, renewals=6,
                        skew=skew)
    with pytest.raises(Stop):
        await r.run()
    issued = [T0 + sum(sleeps[:i]) for i in range(len(sleeps))]  # the apiserver's time at each wake-up
    assert len(api.requests) == 6
    took = clock() - T0  # apiserver time for six renewals
    # One early renewal at most (the enrolled token, placed by the skewed wall clock), then every 48 min.
    assert 5 * 0.8 * 3600 - 1 <= took <= 6 * 0.8 * 3600 + 1, (skew, took, issued[:3])
    assert r.skew == pytest.approx(skew, abs=1)


async def test_renewals_are_never_closer_than_the_minimum_interval(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sleeps: list[float] = []
    r, _, _ = renewal(tmp_path, clock, jwt(exp=T0 + 600), sleeps=sleeps, max_sleeps=10**4, fraction=0.001,
                        renewals=5)
    with pytest.raises(Stop):
        await r.run()
    assert clock() - T0 >= 4 * 10.0, "0.6 s of a 600 s token asked for, 10 s between renewals given"


async def test_a_vm_that_was_off_past_the_renewal_point_renews_at_once(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 29 * DAY)  # off for 29 of the token's 30 days
    sleeps: list[float] = []
    r, api, _ = renewal(tmp_path, clock, jwt(), sleeps=sleeps, max_sleeps=1)
    with pytest.raises(Stop):
        await r.run()
    assert len(api.requests) == 1 and not sleeps[:-1], "renewed before any wait"


async def test_a_refused_renewal_backs_off_and_is_said_once(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 25 * DAY)
    sleeps: list[float] = []
    r, api, tokens = renewal(tmp_path, clock, jwt(), sleeps=sleeps, max_sleeps=12)
    api.fail_with = Forbidden("cannot create serviceaccounts/token in namespace vm: grant it …")
    with pytest.raises(Stop):
        await r.run()
    gaps = [round(s) for s in sleeps]
    assert gaps[:7] == [5, 10, 20, 40, 60, 20, 60], "doubling from 5 s; waits cut at 60 s"
    assert r.last_error.startswith("cannot create serviceaccounts/token")
    assert tokens.current().path.endswith("etc/token")


async def test_a_token_without_expiry_is_not_renewed(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sleeps: list[float] = []
    r, api, _ = renewal(tmp_path, clock, jwt(exp=None), sleeps=sleeps, max_sleeps=3)
    assert renewal_due(files(tmp_path, jwt(exp=None), clock).current(), 0.8) is None
    with pytest.raises(Stop):
        await r.run()
    assert api.requests == []


# -- refused tokens: one line, critical, no retry storm ---------------------------------------------------

def test_the_refusal_says_expired_with_its_date_or_revoked() -> None:
    assert rejection_message("a", T0, SA, T0 + 1) == (
        "token expired on 2027-01-15 08:00:00 UTC; re-enroll with `kubectl vmesh enroll a`")
    revoked = rejection_message("a", T0 + DAY, SA, T0)
    assert revoked.startswith(f"token was revoked or its ServiceAccount deleted ({SA})")
    assert revoked.endswith("re-enroll with `kubectl vmesh enroll a`")


def test_a_refused_token_holds_calls_back_until_a_slow_probe_or_a_new_token(tmp_path: Path) -> None:
    wall, mono = FakeClock(T0 + 31 * DAY), FakeClock(0)
    tokens = files(tmp_path, jwt(), wall)
    logged: list[str] = []

    class Log:
        def error(self, event: str, **_: Any) -> None:
            logged.append(event)

        def info(self, event: str, **_: Any) -> None:
            logged.append(event)

    guard = CredentialGuard(tokens, "a", cast(Any, Log()), clock=wall, monotonic=mono,
                            backoff=Backoff(base=30, cap=300, jitter=0))
    guard.before_call()  # nothing refused yet: the call goes out
    for _ in range(5):  # five loops' calls in flight come back 401
        error = guard.rejected(Unauthorized("401", status=401))
    assert str(error).startswith("token expired on 2027-02-14 08:00:00 UTC")
    assert logged == [guard.problem], "one line"
    for _ in range(100):  # a hundred retries over 29 s: none reaches the apiserver
        mono.advance(0.29)
        with pytest.raises(Unauthorized):
            guard.before_call()
    mono.advance(1.5)
    guard.before_call()  # the slow probe, once
    with pytest.raises(Unauthorized):
        guard.before_call()
    guard.rejected(Unauthorized("401", status=401))
    mono.advance(59)
    with pytest.raises(Unauthorized):
        guard.before_call()  # the next probe comes after 60 s
    fresh = tmp_path / "etc" / "token.new"  # the admin re-enrolled: the bundle's token put in place
    fresh.write_text(jwt(iat=T0 + 31 * DAY, exp=T0 + 61 * DAY))
    fresh.rename(tmp_path / "etc" / "token")
    guard.before_call()
    guard.accepted()
    assert guard.problem == "" and logged[-1] == "the cluster accepts the agent's token again"
    assert len(logged) == 2


# -- whose token it is ----------------------------------------------------------------------------------------

def test_the_account_decides_whether_the_agent_registers() -> None:
    assert judge("system:serviceaccount:vm:vmesh-vm-a", "a", "vm").kind is Kind.OWN
    legacy = judge("system:serviceaccount:vm:vmesh-agent", "agent", "vm")
    assert legacy.kind is Kind.LEGACY and legacy.registers, "the shared account is not VM 'agent'"
    assert legacy.message == ("VM agent uses the shared legacy token (system:serviceaccount:vm:vmesh-agent); "
                              "re-enroll with `kubectl vmesh enroll agent`")
    other = judge("system:serviceaccount:vm:vmesh-vm-b", "a", "vm")
    assert other.kind is Kind.OTHER_VM and not other.registers
    assert "VM b's (system:serviceaccount:vm:vmesh-vm-b)" in other.message and "this agent is VM a" in other.message
    assert judge("system:serviceaccount:prod:vmesh-vm-a", "a", "vm").kind is Kind.OTHER_VM  # another namespace's
    assert judge("kubernetes-admin", "a", "vm").kind is Kind.OTHER
    assert judge("system:serviceaccount:vm:vmesh-agent", "a", "prod").kind is Kind.OTHER


# -- the Lease's annotations for the fleet view ----------------------------------------------------------------

def test_lease_annotations_are_set_only_when_they_change_and_others_are_kept() -> None:
    wanted = lease_annotations("host-1", "0.1.0", "endpointslice", ["web", "mysqldb", "web"])
    assert wanted["vmesh.dev/services"] == "mysqldb,web"
    lease = build_lease("a", "vm", 15, datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC), annotations=wanted)
    assert lease["metadata"]["annotations"] == wanted
    lease["metadata"]["annotations"]["admin/note"] = "keep me"
    assert not with_annotations(lease, wanted)
    assert with_annotations(lease, {**wanted, "vmesh.dev/services": "mysqldb"})
    assert lease["metadata"]["annotations"]["admin/note"] == "keep me"
    assert lease["metadata"]["annotations"]["vmesh.dev/services"] == "mysqldb"


async def test_the_account_check_without_the_apiserver_or_a_readable_token_says_it_cannot_tell(
        tmp_path: Path) -> None:
    """The fallback read the token's own claim with current(), which raised when no token file could be read:
    the check then failed instead of answering "cannot tell"."""

    class Down:
        async def who_am_i(self) -> None:
            raise Unavailable("the apiserver is gone")

    (tmp_path / "token").mkdir()  # unreadable as a file, even for root
    tokens = TokenFiles([str(tmp_path / "token")])
    verdict = await check_account(cast(KubeClient, Down()), tokens, "vm-a", "vm", get_logger())
    assert verdict.kind is Kind.OTHER and verdict.source == "none"
