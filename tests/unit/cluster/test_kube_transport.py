"""The cluster client without kubernetes_asyncio on the daemon's path: what reaches the apiserver (headers, the
token of the moment, bodies, queries), how a kubeconfig is read, and that the daemon never imports the library.

The server is a real aiohttp app on loopback standing in for the apiserver's HTTP surface; the real apiserver is
the integration tests' (test_walking_skeleton, test_token_rotation, test_kubectl_vmesh use both paths).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.cluster.errors import ClusterError, NotFound, Unavailable
from agent.cluster.kube import USER_AGENT, KubeClient, _from_kubeconfig
from agent.cluster.resources import ENDPOINT_SLICES, LEASES
from agent.cluster.tokens import TokenFiles
from agent.config import ClusterSettings

ROOT = Path(__file__).resolve().parents[3]
Seen = list[dict[str, Any]]


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[tuple[str, Seen]]:
    """Records every request; answers a GET of lease `missing` with the apiserver's 404, anything else with the
    request's own body (or a list)."""
    seen: Seen = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                     "headers": dict(request.headers), "body": json.loads(body) if body else None})
        if request.path.endswith("/leases/missing"):
            return web.json_response({"kind": "Status", "message": 'leases "missing" not found', "reason": "NotFound",
                                      "code": 404}, status=404)
        if request.method == "GET":
            return web.json_response({"kind": "List", "metadata": {"resourceVersion": "42"}, "items": []})
        return web.json_response(json.loads(body) if body else {})

    async with serving(handle) as url:
        yield url, seen


@contextlib.asynccontextmanager
async def serving(handle: Callable[[web.Request], Awaitable[web.Response]],
                  ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """An aiohttp app on a free loopback port answering every path with `handle`; its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_each_request_carries_the_token_in_its_file_now_and_json_both_ways(
        apiserver: tuple[str, Seen], tmp_path: Path) -> None:
    server, seen = apiserver
    token = tmp_path / "token"
    token.write_text("first-token\n")
    kube = await KubeClient.connect(ClusterSettings(server=server, token_file=str(token)))
    try:
        body = {"metadata": {"name": "s", "resourceVersion": "7"}, "endpoints": []}
        assert await kube.create(ENDPOINT_SLICES, "vm", body) == body
        token.write_text("second-token-longer\n")  # rotated: a new size and mtime, re-read by the next request
        assert await kube.list(LEASES, "vm", "vmesh.dev/vm=a,app.kubernetes.io/managed-by") == []
        await kube.patch(LEASES, "vm", "l", {"spec": {"x": 1}})
        with pytest.raises(NotFound):  # the apiserver's status mapped as before (its wording is errors.py's)
            await kube.get(LEASES, "vm", "missing")
    finally:
        await kube.close()
    create, listed, patched, _ = seen
    assert (create["method"], create["path"]) == ("POST", "/apis/discovery.k8s.io/v1/namespaces/vm/endpointslices")
    assert create["headers"]["Authorization"] == "Bearer first-token"
    assert create["headers"]["Content-Type"] == "application/json"
    assert create["headers"]["Accept"] == "application/json"
    assert create["headers"]["User-Agent"] == USER_AGENT
    assert create["body"] == body
    assert listed["headers"]["Authorization"] == "Bearer second-token-longer"
    assert listed["query"] == {"labelSelector": "vmesh.dev/vm=a,app.kubernetes.io/managed-by"}
    assert kube.list_version == "42"
    assert patched["headers"]["Content-Type"] == "application/merge-patch+json"
    assert patched["body"] == {"spec": {"x": 1}}
    assert kube.knows(ENDPOINT_SLICES, body)  # what it wrote is remembered, as before


async def test_an_unreadable_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"cannot read cluster.token_file .*/none"):
        await KubeClient.connect(ClusterSettings(server="https://127.0.0.1:1", token_file=str(tmp_path / "none")))


async def test_the_token_files_given_are_the_ones_read(apiserver: tuple[str, Seen], tmp_path: Path) -> None:
    server, seen = apiserver
    enrolled, renewed = tmp_path / "token", tmp_path / "renewed"
    enrolled.write_text("enrolled")
    renewed.write_text("renewed")
    kube = await KubeClient.connect(ClusterSettings(server=server, token_file=str(enrolled)),
                                    TokenFiles([str(enrolled), str(renewed)]))
    try:
        await kube.list(LEASES, "vm")
        await kube.reconnect()  # a fresh pool, the same credentials
        await kube.list(LEASES, "vm")
    finally:
        await kube.close()
    # Neither is a JWT, so the newer file wins.
    assert [s["headers"]["Authorization"] for s in seen] == ["Bearer renewed", "Bearer renewed"]


async def test_a_kubeconfig_is_read_by_kubernetes_asyncio(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not parsed here")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443/", "certificate-authority": str(ca),
                                               "tls-server-name": "kubernetes"}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "vm", "context": {"cluster": "c", "user": "u"}}, {"name": "other", "context": {}}],
    }))
    endpoint = await _from_kubeconfig(ClusterSettings(kubeconfig=str(kubeconfig), context="vm"))
    assert endpoint.server == "https://10.0.0.1:6443"
    assert endpoint.authorization() == "Bearer abc"
    assert (endpoint.ca_file, endpoint.tls_server_name, endpoint.verify) == (str(ca), "kubernetes", True)
    with pytest.raises(ClusterError, match=f"cannot use kubeconfig {kubeconfig}"):
        await _from_kubeconfig(ClusterSettings(kubeconfig=str(kubeconfig), context="absent"))


def test_the_daemon_imports_neither_kubernetes_asyncio_nor_pymysql() -> None:
    """Their import is most of the agent's memory and start (docs/decisions.md, "A light process"): the daemon's
    modules import neither; a kubeconfig or a login check imports them when used."""
    script = ("import sys, agent.cli.main, agent.daemon.agent, agent.cli.cluster_commands\n"
              "print(' '.join(m for m in ('kubernetes_asyncio', 'pymysql', 'yaml') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


async def test_a_refused_connection_is_named_with_what_to_check(tmp_path: Path) -> None:
    """The agent retries it, and says what to look at meanwhile."""
    token = tmp_path / "token"
    token.write_text("t\n")
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"
        kube = await KubeClient.connect(ClusterSettings(server=server, token_file=str(token)))
        try:
            with pytest.raises(Unavailable) as caught:
                await kube.get(LEASES, "vm", "l")
        finally:
            await kube.close()
    assert str(caught.value).startswith(f"cannot reach {server}: "), caught.value
    assert "is the apiserver up, and is cluster.server's port right?" in str(caught.value), caught.value


async def test_the_environment_proxy_is_honoured_unless_no_proxy_names_the_server(
        apiserver: tuple[str, Seen], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY and NO_PROXY, read once when the client is made (not at every request, in threads)."""
    proxy, seen = apiserver  # the recording server plays the proxy: it gets the request in absolute form
    token = tmp_path / "token"
    token.write_text("t\n")
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    with socket.socket() as closed:  # bound, never listening: a direct connection is refused
        closed.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"
        kube = await KubeClient.connect(ClusterSettings(server=server, token_file=str(token)))
        try:
            assert await kube.list(LEASES, "vm") == []
        finally:
            await kube.close()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = await KubeClient.connect(ClusterSettings(server=server, token_file=str(token)))
        try:
            with pytest.raises(Unavailable):
                await direct.list(LEASES, "vm")
        finally:
            await direct.close()
    (through,) = seen
    assert through["path"] == "/apis/coordination.k8s.io/v1/namespaces/vm/leases"
    assert through["headers"]["Host"] == server.removeprefix("http://")


async def test_a_replace_leaves_the_managed_fields_it_read_to_the_server(apiserver: tuple[str, Seen],
                                                                        tmp_path: Path) -> None:
    server, seen = apiserver
    token = tmp_path / "token"
    token.write_text("t\n")
    read: dict[str, Any] = {"metadata": {"name": "l", "resourceVersion": "7", "labels": {"a": "b"},
                         "managedFields": [{"manager": "vmesh-agent", "operation": "Update", "fieldsV1": {}}]},
            "spec": {"holderIdentity": "a"}}
    kube = await KubeClient.connect(ClusterSettings(server=server, token_file=str(token)))
    try:
        await kube.replace(LEASES, "vm", "l", read)
    finally:
        await kube.close()
    assert seen[0]["body"] == {"metadata": {"name": "l", "resourceVersion": "7", "labels": {"a": "b"}},
                               "spec": {"holderIdentity": "a"}}
    assert "managedFields" in read["metadata"]  # the caller's copy is not changed


async def test_a_kubeconfigs_credentials_are_read_again_when_refused(tmp_path: Path) -> None:
    """Issue 20: a kubeconfig's credentials were read once, at start: an exec plugin's ~15 min token, OIDC or a
    tokenFile then ended in 401 for good. Here a tokenFile the apiserver stops accepting is rotated by its owner:
    the first refused request reads the kubeconfig again and is tried once more."""
    good = {"token": "first"}
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {good['token']}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized",
                                      "message": "Unauthorized"}, status=401)
        return web.json_response({"kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})

    token_file = tmp_path / "token"
    token_file.write_text("first")
    kubeconfig = tmp_path / "kubeconfig"
    async with serving(handle) as url:
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
        kube = await KubeClient.connect(ClusterSettings(kubeconfig=str(kubeconfig)))
        try:
            assert await kube.list(LEASES, "vm") == []
            good["token"] = "second"  # the apiserver now takes only the rotated token...
            token_file.write_text("second")  # ...which its owner put in the file
            assert await kube.list(LEASES, "vm") == []
            assert seen == ["Bearer first", "Bearer first", "Bearer second"]
        finally:
            await kube.close()
