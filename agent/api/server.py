"""The local API: aiohttp on a unix socket (mode 0660, group vmesh-agent), and optionally a TCP listener.

Reads are open to whoever may connect (the socket's group); writes only to root and the agent's own
user, as the kernel reports the peer (SO_PEERCRED). Every error is a JSON body with a 4xx/5xx status.
The TCP listener (`[metrics] listen`, for Prometheus, which cannot scrape a unix socket) is a separate
application with two routes only, GET /metrics and GET /v1/health: nothing else exists there.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from agent.api import documents
from agent.api.agent_view import AgentView
from agent.api.metrics import AgentMetrics
from agent.api.openapi import OPENAPI, REASON_PATTERN

SOCKET_GROUP = "vmesh-agent"
SOCKET_MODE = 0o660
HEALTH_STATUS = {documents.PASSING: 200, documents.WARNING: 429, documents.CRITICAL: 503}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


STOP_GRACE = 1.0  # seconds a request in flight may still take when the server stops
HEALTH_MAX_AGE = 0.1  # seconds a computed health answer is reused: health checkers poll hard


def json_response(body: Any, status: int = 200) -> web.Response:
    # Compact: the C encoder (indent= falls back to pure Python); `| jq` or the CLI make it pretty.
    return web.Response(text=json.dumps(body) + "\n", status=status, content_type="application/json")


def peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ApiServer:
    def __init__(self, agent: AgentView, path: str, *, metrics: AgentMetrics,
                 log: structlog.typing.FilteringBoundLogger, listen: tuple[str, int] | None = None) -> None:
        self.agent = agent
        self.path = path
        self.metrics = metrics
        self.log = log
        self.listen = listen
        self.tcp_address: tuple[str, int] | None = None  # where the TCP listener is bound, once it is
        # its socket's inode: discovery leaves the agent's own listener alone
        self.tcp_inode: int | None = None
        self._health: tuple[float, dict[str, Any]] = (-1.0, {})
        self._runner: web.AppRunner | None = None
        self._tcp_runner: web.AppRunner | None = None
        # (device, inode) of the socket file this server made
        self._socket_file: tuple[int, int] | None = None
        # Read-only, for the network: /metrics and /v1/health, never the write API, status or services.
        self.public = web.Application(middlewares=[self._errors_and_timing], client_max_size=1024)
        self.public.router.add_get("/v1/health", self.get_health)
        self.public.router.add_get("/metrics", self.get_metrics)
        self.app = web.Application(middlewares=[self._errors_and_timing], client_max_size=64 * 1024)
        self.app.router.add_get("/v1/health", self.get_health)
        self.app.router.add_get("/v1/status", self.get_status)
        self.app.router.add_get("/v1/services", self.get_services)
        self.app.router.add_get("/v1/services/{name}", self.get_service)
        self.app.router.add_put("/v1/services/{name}/maintenance", self.put_maintenance)
        self.app.router.add_get("/metrics", self.get_metrics)
        self.app.router.add_get("/v1/openapi.json", self.get_openapi)

    async def start(self) -> None:
        _clear_stale_socket(self.path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # A request still running at shutdown gets a second, not aiohttp's 60: the stop has a deadline.
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=STOP_GRACE)
        await runner.setup()
        try:
            await web.UnixSite(runner, self.path).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        made = os.stat(self.path)
        self._socket_file = (made.st_dev, made.st_ino)
        os.chmod(self.path, SOCKET_MODE)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(self.path, -1, grp.getgrnam(SOCKET_GROUP).gr_gid)
        if self.listen is not None:
            await self._start_tcp(*self.listen)

    async def _start_tcp(self, host: str, port: int) -> None:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            sock = socket.create_server((host, port),
                                        family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:
            raise OSError(f"metrics.listen: cannot listen on {where}: {exc.strerror or exc}") from None
        runner = web.AppRunner(self.public, handle_signals=False, access_log=None,
                               shutdown_timeout=STOP_GRACE)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._tcp_runner = runner
        bound = sock.getsockname()  # port 0 becomes a real one
        self.tcp_inode = os.fstat(sock.fileno()).st_ino
        self.tcp_address = (str(bound[0]), int(bound[1]))
        self.log.info("metrics listener serving /metrics and /v1/health", host=bound[0], port=bound[1])

    async def stop(self) -> None:
        """Stop serving and remove the socket file, only if it is ours (never another agent's)."""
        if self._tcp_runner is not None:
            await self._tcp_runner.cleanup()
            self._tcp_runner = None
            self.tcp_address = self.tcp_inode = None
        if self._runner is None:
            return
        await self._runner.cleanup()
        self._runner = None
        made, self._socket_file = self._socket_file, None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return
        # Someone may have removed ours and another agent bound the path since:
        # that file is not ours to remove.
        if made == (found.st_dev, found.st_ino):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    @web.middleware
    async def _errors_and_timing(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = json_response({"error": str(exc)}, exc.status)
        except web.HTTPException as exc:  # aiohttp's own 404/405/413...: same JSON shape
            response = json_response({"error": exc.reason}, exc.status)
        except ConnectionResetError:  # the client hung up mid-request: not our failure, and nobody to tell
            response = json_response({"error": "client went away"}, 400)
        except Exception as exc:  # a bug: still JSON, and logged
            self.log.error("api handler failed", path=request.path, error=repr(exc))
            response = json_response({"error": "internal error; see the agent's log"}, 500)
        route = (request.match_info.route.resource.canonical if request.match_info.route.resource
                 else "unmatched")
        self.metrics.api_latency.labels(request.method, route, str(response.status)).observe(
            time.perf_counter() - started)
        return response

    def health(self) -> dict[str, Any]:
        """documents.health, reused for HEALTH_MAX_AGE: a bounded staleness in exchange for cheap polling."""
        computed_at, body = self._health
        now = time.monotonic()
        if now - computed_at > HEALTH_MAX_AGE:
            body = documents.health(self.agent)
            self._health = (now, body)
        return body

    async def get_health(self, request: web.Request) -> web.Response:
        body = self.health()
        code = HEALTH_STATUS[body["status"]]
        fmt = request.query.get("format", "json")
        if fmt == "text":
            return web.Response(text="\n".join([body["status"], *body["reasons"]]) + "\n", status=code)
        if fmt != "json":
            raise ApiError(400, f"format must be json or text, not {fmt!r}")
        return json_response(body, code)

    async def get_status(self, _: web.Request) -> web.Response:
        return json_response(documents.status(self.agent))

    async def get_services(self, _: web.Request) -> web.Response:
        return json_response(documents.services(self.agent))

    async def get_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = next((s for s in documents.services(self.agent) if s["name"] == name), None)
        if found is None:
            raise ApiError(404, f"no service {name!r} on this VM")
        return json_response(found)

    async def put_maintenance(self, request: web.Request) -> web.Response:
        uid = peer_uid(request)
        if uid is None or uid not in (0, os.getuid()):
            raise ApiError(403, "only root or the agent's own user may change maintenance mode")
        name = request.match_info["name"]
        try:
            body = json.loads((await request.read()).decode("utf-8"))  # JSON on the wire is UTF-8 (RFC 8259)
        # UnicodeDecodeError is a ValueError; RecursionError: absurd nesting
        except (ValueError, RecursionError):
            raise ApiError(400, "body must be JSON: {\"enable\": true, \"reason\": \"...\"}") from None
        if not isinstance(body, dict) or not isinstance(body.get("enable"), bool):
            raise ApiError(400, "body must be a JSON object with a boolean \"enable\"")
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 256 or not _printable(reason):
            raise ApiError(400, "\"reason\" must be printable text of at most 256 characters")
        unknown = set(body) - {"enable", "reason"}
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        if body["enable"] and name not in {r.service for r in self.agent.tracked}:
            raise ApiError(404, f"no service {name!r} on this VM")
        now = self.agent.set_maintenance(name, body["enable"], reason)
        self._health = (-1.0, {})  # read-your-writes: the next health answer is computed afresh
        return json_response({"service": name, "maintenance": now})

    async def get_metrics(self, request: web.Request) -> web.Response:
        """OpenMetrics when the scraper's Accept asks for it (Prometheus does),
        the text format 0.0.4 otherwise."""
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type,
                                                "X-Content-Type-Options": "nosniff"})

    async def get_openapi(self, _: web.Request) -> web.Response:
        return json_response(OPENAPI)


_REASON = re.compile(REASON_PATTERN)


def _printable(text: str) -> bool:
    """What the OpenAPI document allows in a reason (one pattern for both)."""
    return _REASON.fullmatch(text) is not None


def _clear_stale_socket(path: str) -> None:
    """A socket file left by a crash is replaced; one that still answers means another agent runs."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; remove it or set api.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listening: stale
            return
    raise OSError(f"another agent is already serving {path}")
