"""The unit tests' fakes: one clock and one API.

FakeClock: time that moves only when a test (or a sleep it hands out) moves it.

FakeApi: the one in-memory stand-in for KubeClient in unit tests: objects by name, and TokenRequest.

It keeps the apiserver's optimistic-concurrency rules: creating an existing name, and writing, patching the
status of or deleting an object with a stale resourceVersion fail with 409; every stored write gets a new
resourceVersion. It holds one resource's objects (a test uses one kind). Hooks sequence the races that the
real apiserver only shows by chance: `before_write` runs right before each write (somebody else's write in
between), `reply_gate` holds a reply after the write is stored (a slow reply), `fail_with` fails every call.
A behaviour is proven against the real apiserver in tests/integration; this only orders the steps.

Not here, on purpose: test_reconciler's ScriptedBackend (a Backend failing on cue) and FakeTime (its clock
and its waits cut short by pokes) stand in for other interfaces than the API and the clock.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

from agent.cluster.errors import Conflict, NotFound
from agent.cluster.resources import Resource

Body = dict[str, Any]


def jwt(sub: str, iat: float, exp: float | None, aud: Any) -> str:
    """An unsigned token with a ServiceAccount token's claims (the agent reads them, never verifies)."""
    payload: dict[str, Any] = {"sub": sub, "iat": int(iat), "aud": list(aud) if not isinstance(aud, str) else aud}
    if exp is not None:
        payload["exp"] = int(exp)

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(payload)}.c2ln"


class FakeClock:
    """Call it for the time; `advance()` moves it; `sleep()` (for code that takes a sleep function) records the
    delay, moves the time by it and yields to the loop once."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FakeApi:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.objects: dict[str, Body] = {}
        self._versions = itertools.count(1)
        self.clock = clock or FakeClock()  # when tokens are issued
        self.fail_with: Exception | None = None  # every call raises this while set
        self.calls: list[str] = []  # the verbs, in order
        self.writes: list[tuple[str, str]] = []  # (verb, resourceVersion sent; "" for a create)
        self.requests: list[tuple[str, str, list[str], int]] = []  # TokenRequests asked for
        # Somebody else's write, right before each of ours: called with the verb about to be tried.
        self.before_write: Callable[[str], None] | None = None
        # While set, a write is stored at once but its reply waits for this event (a slow reply: the apiserver
        # has the write, the client does not know yet); `stored` is set at each such write.
        self.reply_gate: asyncio.Event | None = None
        self.stored = asyncio.Event()

    def _check(self, verb: str) -> None:
        self.calls.append(verb)
        if self.fail_with is not None:
            raise self.fail_with

    def _write(self, verb: str, version_sent: str) -> None:
        self._check(verb)
        self.writes.append((verb, version_sent))
        if self.before_write is not None:
            self.before_write(verb)

    def put(self, body: Body) -> Body:
        """Store `body` as the apiserver would (a new resourceVersion; the uid kept or made): somebody's write."""
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}-{body['metadata']['resourceVersion']}")
        self.objects[body["metadata"]["name"]] = body
        return copy.deepcopy(body)

    def _current(self, name: str, version_sent: str) -> Body:
        current = self.objects.get(name)
        if current is None:
            raise NotFound(f"{name} not found", status=404)
        if version_sent and version_sent != current["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified", status=409, reason="Conflict")
        return current

    async def _reply(self, stored: Body) -> Body:
        if self.reply_gate is not None:
            self.stored.set()
            await self.reply_gate.wait()
        return stored

    async def list(self, resource: Resource, namespace: str, label_selector: str = "") -> list[Body]:
        self._check("list")
        keys = [k for k in label_selector.split(",") if k]
        return [copy.deepcopy(o) for o in self.objects.values()
                if all(k.split("=")[0] in (o["metadata"].get("labels") or {}) for k in keys)]

    async def get(self, resource: Resource, namespace: str, name: str) -> Body:
        self._check("get")
        if name not in self.objects:
            raise NotFound(f"{name} not found", status=404)
        return copy.deepcopy(self.objects[name])

    async def create(self, resource: Resource, namespace: str, body: Body) -> Body:
        self._write("create", "")
        if body["metadata"]["name"] in self.objects:
            raise Conflict("already exists", status=409, reason="AlreadyExists")
        return await self._reply(self.put(body))

    async def replace(self, resource: Resource, namespace: str, name: str, body: Body) -> Body:
        sent = str(body["metadata"].get("resourceVersion") or "")
        self._write("replace", sent)
        current = self._current(name, sent or "<none>")
        body = copy.deepcopy(body)
        body["metadata"]["uid"] = current["metadata"]["uid"]
        return await self._reply(self.put(body))

    async def patch_status(self, resource: Resource, namespace: str, name: str, patch: Body) -> Body:
        sent = str((patch.get("metadata") or {}).get("resourceVersion") or "")
        self._write("status", sent)
        current = self._current(name, sent)
        return await self._reply(self.put({**current, "status": patch["status"]}))

    async def delete(self, resource: Resource, namespace: str, name: str, *, resource_version: str = "",
                     uid: str = "") -> None:
        self._write("delete", resource_version)
        self._current(name, resource_version)
        del self.objects[name]

    def renew(self, name: str, stamp: str) -> Body:
        """What a live holder of a Lease does: a new renewTime, a new resourceVersion."""
        lease = copy.deepcopy(self.objects[name])
        lease["spec"]["renewTime"] = stamp
        return self.put(lease)

    async def request_token(self, namespace: str, service_account: str, *, audiences: builtins.list[str],
                            expiration_seconds: int) -> str:
        """TokenRequest: a new token issued at the clock's time for the asked lifetime."""
        self.requests.append((namespace, service_account, audiences, expiration_seconds))
        self._check("token")
        return jwt(f"system:serviceaccount:{namespace}:{service_account}", self.clock(),
                   self.clock() + expiration_seconds, audiences)
