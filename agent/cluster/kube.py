"""The one module that imports kubernetes_asyncio, and only to read a kubeconfig.

It speaks JSON dicts in and out over aiohttp, raises only agent.cluster.errors, and never retries: retry
policy lives with the callers that know what a retry means (the sync loop and the heartbeat).

Requests go straight through aiohttp (what kubernetes_asyncio's own REST layer does underneath: the same
session settings, TLS context and headers). kubernetes_asyncio is imported lazily, inside `_from_kubeconfig`,
only when cluster.kubeconfig is set: its loader (contexts, inline or file credentials, exec plugins) is what
it is good at, and importing it imports every API model class (37 MB and about 0.17 s), which the deb's
default config (server + ca_file + token_file) never pays. docs/decisions.md says why and what it measured.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from agent import __version__
from agent.cluster.credentials import CredentialGuard
from agent.cluster.errors import ClusterError, Forbidden, Gone, Unauthorized, Unavailable, from_status
from agent.cluster.resources import SELF_SUBJECT_REVIEWS, SERVICE_ACCOUNTS, Resource
from agent.cluster.tokens import TokenFiles
from agent.config import ClusterSettings

Body = dict[str, Any]
PatchKind = Literal["merge", "strategic", "json", "apply"]
_PATCH_TYPES = {
    "apply": "application/apply-patch+yaml",  # server-side apply; JSON is YAML
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# The apiserver sends a watch bookmark about once a minute: a watch silent for longer is a dead connection.
WATCH_SILENCE = 90
MAX_EVENT_BYTES = 16 << 20  # an object is at most ~1.5 MiB in etcd; more is not an event
KNOWN_VERSIONS = 512
USER_AGENT = f"vmesh-agent/{__version__}"
CONNECTIONS = 100  # per client, at most (kubernetes_asyncio's connection_pool_maxsize)
# a watch event carrying a large object exceeds aiohttp's default buffer (etcd: 1.5 MiB)
READ_BUFFER = 2 << 20
# A kubeconfig's credentials (an exec plugin's ~15 min tokens, OIDC, a tokenFile) and a CA file are read again
# when the apiserver refuses them (401) or the server's certificate no longer verifies, at most this often.
REFRESH_EVERY = 5.0


@dataclass(frozen=True)
class Endpoint:
    """How to reach one cluster: its URL, what TLS trusts and presents, and the Authorization header of each
    request (re-read for every request: bound tokens rotate in their files)."""

    server: str
    authorization: Callable[[], str]
    ca_file: str = ""  # empty: the system's trusted CAs
    cert_file: str = ""
    key_file: str = ""
    verify: bool = True
    tls_server_name: str = ""
    proxy: str = ""

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, keyfile=self.key_file or None)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # The cluster's CA is checked as kubectl checks it (Go's crypto/x509), on every Python alike: CPython
        # 3.13 turned on OpenSSL's X509_STRICT by default, which refuses a CA certificate without the keyUsage
        # extension (`openssl req -x509` makes such CAs), so the same cluster worked from Debian 12 VMs and
        # not from Debian 13.
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
        return context


def _from_token_files(settings: ClusterSettings, tokens: TokenFiles | None) -> Endpoint:
    files = tokens or TokenFiles([settings.token_file])
    try:
        files.current()
    except OSError as exc:
        raise ClusterError(f"cannot read cluster.token_file {settings.token_file}: {exc}") from exc
    return Endpoint(server=settings.server, ca_file=settings.ca_file,
                    authorization=lambda: f"Bearer {files.current().value}")


async def _from_kubeconfig(settings: ClusterSettings) -> Endpoint:
    """The endpoint a kubeconfig's context describes, read by kubernetes_asyncio's loader
    (imported here only)."""
    try:
        from kubernetes_asyncio.client import Configuration  # noqa: PLC0415  (37 MB, 0.17 s: see above)
        from kubernetes_asyncio.config import load_kube_config  # noqa: PLC0415

        configuration = Configuration()
        await load_kube_config(config_file=settings.kubeconfig, context=settings.context or None,
                               client_configuration=configuration, persist_config=False)
    except Exception as exc:  # the loader raises bare ConfigException/KeyError/yaml errors
        raise ClusterError(f"cannot use kubeconfig {settings.kubeconfig}: {exc}") from exc
    key = configuration.api_key.get("BearerToken", "")
    prefix = configuration.api_key_prefix.get("BearerToken", "")
    header = f"{prefix} {key}" if prefix and key else str(key)  # the loader's token carries its own "Bearer "
    return Endpoint(server=str(configuration.host), authorization=lambda: header,
                    ca_file=configuration.ssl_ca_cert or "", cert_file=configuration.cert_file or "",
                    key_file=configuration.key_file or "", verify=bool(configuration.verify_ssl),
                    tls_server_name=configuration.tls_server_name or "", proxy=configuration.proxy or "")


async def _same(endpoint: Endpoint) -> Endpoint:
    """Token files are re-read at every request already; a CA file is read again by building a new context."""
    return endpoint


def _proxy_for(endpoint: Endpoint) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The kubeconfig's proxy, else the environment's (HTTPS_PROXY, NO_PROXY), honoured as kubernetes_asyncio
    did. Looked up once, with aiohttp's own function: its `trust_env` looks it up again in a thread at every
    request (and ~/.netrc in another), two thread hand-offs per heartbeat (bench/startup, idle CPU); the
    environment of a running process does not change."""
    if endpoint.proxy:
        return endpoint.proxy, None
    try:
        proxy, auth = get_env_proxy_for_url(URL(endpoint.server))
    except LookupError:  # none for this scheme, or NO_PROXY names the server
        return None, None
    return str(proxy), auth


class KubeClient:
    """A connection to one cluster. Create with `await KubeClient.connect(settings)`; close when done."""

    def __init__(self, endpoint: Endpoint, timeout: float, guard: CredentialGuard | None = None, *,
                 reload: Callable[[], Awaitable[Endpoint]] | None = None) -> None:
        self._endpoint = endpoint
        self._guard = guard
        # How to read the credentials and CA again (issue 20: a kubeconfig's were frozen at start, so an exec
        # plugin's short-lived token ended in 401 for good, and a rotated ca.crt needed a restart).
        self._reload = reload or (lambda: _same(endpoint))
        self._reloaded_at = -REFRESH_EVERY
        self._ssl = endpoint.ssl_context()  # built once: loading the CA file is the costly part
        self._proxy, self._proxy_auth = _proxy_for(endpoint)
        self._session = self._new_session()
        self.server = endpoint.server
        self._timeout = timeout
        self._known: dict[tuple[str, str], str] = {}  # (plural, name) -> resourceVersion last written or read
        # of the last list(): a point in the cluster's history that a watch can start at
        self.list_version = ""

    @classmethod
    async def connect(cls, settings: ClusterSettings, tokens: TokenFiles | None = None,
                      guard: CredentialGuard | None = None) -> KubeClient:
        """`tokens`: where the token is read (default: cluster.token_file alone); `guard`: holds calls back
        while the cluster refuses the token (agent.cluster.credentials)."""
        endpoint = (await _from_kubeconfig(settings) if settings.kubeconfig
                    else _from_token_files(settings, tokens))
        reload = (lambda: _from_kubeconfig(settings)) if settings.kubeconfig else None
        try:
            return cls(endpoint, settings.request_timeout, guard, reload=reload)
        except (OSError, ssl.SSLError) as exc:
            raise ClusterError(f"cannot set up TLS for {endpoint.server}: {exc}") from exc

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS, ssl=self._ssl),
                                     read_bufsize=READ_BUFFER)

    async def close(self) -> None:
        await self._session.close()

    def ca_certificate(self) -> bytes:
        """The PEM of the CA this client trusts (from the kubeconfig's file or inline data); empty if none."""
        path = self._endpoint.ca_file
        if not path:
            return b""
        with open(path, "rb") as fh:
            return fh.read()

    async def _reloaded(self, why: str) -> bool:
        """Read the credentials and the CA again (`why`: "credentials" after a 401, "tls" after a certificate
        that did not verify); True when something changed and the request is worth one more try."""
        now = time.monotonic()
        if now - self._reloaded_at < REFRESH_EVERY:
            return False
        self._reloaded_at = now
        try:
            fresh = await self._reload()
        except ClusterError:
            return False  # the kubeconfig is broken now: the refusal stands, and says so
        before = self._endpoint
        self._endpoint = fresh
        if why == "tls" or (fresh.ca_file, fresh.cert_file, fresh.key_file) != (
                before.ca_file, before.cert_file, before.key_file):
            try:
                self._ssl = fresh.ssl_context()
            except (OSError, ssl.SSLError):
                return False
            await self.reconnect()
            return True
        return fresh.authorization() != before.authorization()

    async def reconnect(self) -> None:
        """Drop pooled connections, e.g. after the VM lost the address they were made from: packets
        from an address that is gone vanish without a reset, so the next request would hang until its
        timeout."""
        old, self._session = self._session, self._new_session()
        await old.close()

    def _request(self, method: str, path: str, *, query: dict[str, str] | None, data: bytes | None,
                 content_type: str, timeout: aiohttp.ClientTimeout) -> Any:
        """The request, as an async context manager (aiohttp's); the token is read now, for this request."""
        endpoint = self._endpoint
        headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": USER_AGENT}
        authorization = endpoint.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return self._session.request(method, endpoint.server + path, params=query, data=data, headers=headers,
                                     timeout=timeout, proxy=self._proxy, proxy_auth=self._proxy_auth,
                                     server_hostname=endpoint.tls_server_name or None)

    async def get(self, resource: Resource, namespace: str, name: str) -> Body:
        return await self._call("GET", resource, namespace, name, verb="get")

    async def list(self, resource: Resource, namespace: str, label_selector: str = "") -> list[Body]:
        query = {"labelSelector": label_selector} if label_selector else None
        result = await self._call("GET", resource, namespace, "", verb="list", query=query)
        self.list_version = str(result.get("metadata", {}).get("resourceVersion", "")) or self.list_version
        items: list[Body] = result.get("items", [])
        return items

    async def list_with_version(self, resource: Resource, namespace: str,
                                label_selector: str = "") -> tuple[builtins.list[Body], str]:
        """The items and the list's resourceVersion, to start a watch from (the reaper's view of every VM's
        Lease: not remembered as this VM's own versions)."""
        query = {"labelSelector": label_selector} if label_selector else None
        result = await self._call("GET", resource, namespace, "", verb="list", query=query, remember=False)
        return result.get("items", []), str(result.get("metadata", {}).get("resourceVersion", ""))

    async def watch(self, resource: Resource, namespace: str, *, label_selector: str = "",
                    field_selector: str = "", resource_version: str = "", timeout_seconds: int = 60,
                    on_open: Callable[[], None] | None = None) -> AsyncIterator[tuple[str, Body]]:
        """Yield (type, object) events, BOOKMARKs included, until the server ends the watch (after about
        timeout_seconds). Without resource_version the server first sends the current objects as ADDED.

        A watch too old to resume raises Gone (list or watch again from scratch); anything else that goes
        wrong, a line too long or garbage included, is a ClusterError, so a caller's loop never dies of it.
        The server sends a bookmark about once a minute, so a connection silent for longer than
        WATCH_SILENCE is taken for dead (packets dropped) rather than waited on until the watch's end.
        `on_open` is called once the server has accepted the watch: every change from then on is an event."""
        query = {"watch": "true", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if resource_version:
            query["resourceVersion"] = resource_version
        if self._guard is not None:
            self._guard.before_call()
        try:
            request = self._request("GET", resource.path(namespace), query=query, data=None,
                                    content_type="application/json", timeout=aiohttp.ClientTimeout(
                                        connect=self._timeout,
                                        sock_read=min(timeout_seconds, WATCH_SILENCE) + self._timeout))
            async with request as response:
                if response.status != 200:
                    error = from_status(response.status, _decode(await response.read()), "watch",
                                        resource=resource, namespace=namespace, name="",
                                        retry_after=response.headers.get("Retry-After"))
                    if isinstance(error, Unauthorized):
                        await self._reloaded("credentials")  # the caller's next watch uses what was read
                    raise self._judged(error)
                if self._guard is not None:
                    self._guard.accepted()
                if on_open is not None:
                    on_open()
                async for line in _lines(response.content, resource):
                    event = _decode(line)
                    kind, obj = str(event.get("type", "")), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(f"watch of {resource.qualified} expired: {obj.get('message', '')}",
                                       status=410)
                        raise ClusterError(f"watch of {resource.qualified}: {obj.get('message', '')}")
                    if not kind or not isinstance(obj, dict):
                        raise ClusterError(f"watch of {resource.qualified}: not an event: {line[:100]!r}")
                    yield kind, obj
        except ClusterError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from exc
        except Exception as exc:  # a watch ends in a ClusterError, never in something that kills its caller
            raise ClusterError(f"watch of {resource.qualified} failed: {type(exc).__name__}: {exc}") from exc

    def knows(self, resource: Resource, obj: Body) -> bool:
        """Whether `obj` is exactly the version of it this client last wrote or read: a watch event that
        only echoes what the agent already has."""
        meta = obj.get("metadata") or {}
        version = meta.get("resourceVersion")
        return bool(version) and self._known.get((resource.plural, str(meta.get("name", "")))) == version

    def _remember(self, resource: Resource, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("name") and meta.get("resourceVersion"):
            key = (resource.plural, str(meta["name"]))
            self._known.pop(key, None)  # re-inserted last: the dict is kept in order of use
            self._known[key] = str(meta["resourceVersion"])
            while len(self._known) > KNOWN_VERSIONS:
                self._known.pop(next(iter(self._known)))

    async def create(self, resource: Resource, namespace: str, body: Body, *, dry_run: bool = False) -> Body:
        """POST; with `dry_run`, admitted (policies included) and validated but not stored."""
        if dry_run:
            return await self._call("POST", resource, namespace, "", body=body, query={"dryRun": "All"},
                                    remember=False)
        return await self._call("POST", resource, namespace, "", body=body)

    async def replace(self, resource: Resource, namespace: str, name: str, body: Body) -> Body:
        """PUT `body`, without the managedFields it was read with: an update that leaves them out keeps the
        server's, so sending them back (every heartbeat) only makes each request larger."""
        metadata = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
        return await self._call("PUT", resource, namespace, name, body={**body, "metadata": metadata})

    async def patch(self, resource: Resource, namespace: str, name: str, patch: Any,
                    kind: PatchKind = "merge") -> Body:
        return await self._call("PATCH", resource, namespace, name, body=patch,
                                content_type=_PATCH_TYPES[kind])

    async def apply(self, resource: Resource, namespace: str, body: Body, *, field_manager: str) -> Body:
        """Server-side apply of `body` as `field_manager`, taking over fields others set (kubectl apply
        --server-side --force-conflicts).
        An apply that changes nothing leaves the resourceVersion as it was."""
        name = str(body["metadata"]["name"])
        return await self._call("PATCH", resource, namespace, name, body=body,
                                content_type=_PATCH_TYPES["apply"],
                                query={"fieldManager": field_manager, "force": "true"})

    async def create_subresource(self, resource: Resource, namespace: str, name: str, subresource: str,
                                 body: Body) -> Body:
        """POST to a subresource, e.g. a TokenRequest to serviceaccounts/NAME/token."""
        return await self._call("POST", resource, namespace, f"{name}/{subresource}", body=body,
                                remember=False)

    async def delete(self, resource: Resource, namespace: str, name: str, *,
                     resource_version: str = "", uid: str = "") -> None:
        """Delete; with resource_version/uid set, only that exact version of the object."""
        preconditions = {k: v for k, v in (("resourceVersion", resource_version), ("uid", uid)) if v}
        body = ({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions}
                if preconditions else None)
        await self._call("DELETE", resource, namespace, name, body=body)

    async def _call(self, method: str, resource: Resource, namespace: str, name: str, *, verb: str = "",
                    body: Any = None, query: dict[str, str] | None = None,
                    content_type: str = "application/json", remember: bool = True) -> Body:
        try:
            return await self._call_once(method, resource, namespace, name, verb=verb, body=body, query=query,
                                         content_type=content_type, remember=remember)
        except Unauthorized:
            if not await self._reloaded("credentials"):
                raise
        except Unavailable as exc:
            certificate = isinstance(exc.__cause__, aiohttp.ClientConnectorCertificateError)
            if not certificate or not await self._reloaded("tls"):
                raise
        return await self._call_once(method, resource, namespace, name, verb=verb, body=body, query=query,
                                     content_type=content_type, remember=remember)

    async def _call_once(self, method: str, resource: Resource, namespace: str, name: str, *, verb: str,
                         body: Any, query: dict[str, str] | None, content_type: str, remember: bool) -> Body:
        verb = verb or _VERBS[method]
        if self._guard is not None:
            self._guard.before_call()
        try:
            request = self._request(method, resource.path(namespace, name), query=query,
                                    data=None if body is None else json.dumps(body).encode(),
                                    content_type=content_type,
                                    timeout=aiohttp.ClientTimeout(total=self._timeout))
            async with request as response:
                status = response.status
                raw = await response.read()
                retry_after = response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from exc
        payload = _decode(raw)
        if 200 <= status < 300:
            if self._guard is not None:
                self._guard.accepted()
            for obj in (payload.get("items") or [payload]) if remember else ():
                if isinstance(obj, dict) and obj.get("kind") != "Status":
                    self._remember(resource, obj)
            return payload
        raise self._judged(from_status(status, payload, verb, resource=resource, namespace=namespace,
                                       name=name, retry_after=retry_after))

    def _unreachable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"cannot reach {self.server}: {_describe_connection_error(exc)}")

    def _judged(self, error: ClusterError) -> ClusterError:
        """A 401 goes through the guard, which rephrases it (expired or revoked)
        and holds further calls back."""
        if isinstance(error, Unauthorized) and self._guard is not None:
            return self._guard.rejected(error)
        return error

    async def who_am_i(self) -> str:
        """The username the apiserver authenticates this client as (SelfSubjectReview,
        authentication.k8s.io/v1, GA since 1.28). NotFound from an older apiserver."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        result = await self._call("POST", SELF_SUBJECT_REVIEWS, "", "", body=body, remember=False)
        return str(((result.get("status") or {}).get("userInfo") or {}).get("username") or "")

    async def request_token(self, namespace: str, service_account: str, *, audiences: builtins.list[str],
                            expiration_seconds: int) -> str:
        """A new token for a ServiceAccount through the TokenRequest API (the agent asks only for its own)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": audiences, "expirationSeconds": expiration_seconds}}
        try:
            result = await self._call("POST", SERVICE_ACCOUNTS, namespace, f"{service_account}/token",
                                      body=body, verb="create", remember=False)
        except Forbidden as exc:  # RBAC names the subresource: say it, so the fix is plain
            message = str(exc).replace(" serviceaccounts ", " serviceaccounts/token ", 1)
            raise Forbidden(message, status=exc.status, reason=exc.reason) from exc
        token = str((result.get("status") or {}).get("token") or "")
        if not token:
            raise ClusterError(f"TokenRequest for {namespace}/{service_account} returned no token")
        return token

    async def patch_status(self, resource: Resource, namespace: str, name: str, patch: Any,
                           kind: PatchKind = "merge") -> Body:
        """PATCH the status subresource; a metadata.resourceVersion in the patch makes it conditional."""
        return await self._call_status("PATCH", resource, namespace, name, body=patch,
                                       content_type=_PATCH_TYPES[kind])

    async def _call_status(self, method: str, resource: Resource, namespace: str, name: str, *, body: Any,
                           content_type: str) -> Body:
        try:
            return await self._call(method, resource, namespace, f"{name}/status", body=body,
                                    content_type=content_type)
        except Forbidden as exc:
            # RBAC grants a subresource on its own ("workloadentries/status"): name it, so the fix is plain.
            message = str(exc).replace(f" {resource.qualified} ", f" {resource.qualified}/status ", 1)
            raise Forbidden(message, status=exc.status, reason=exc.reason) from exc


async def _lines(content: aiohttp.StreamReader, resource: Resource) -> AsyncIterator[bytes]:
    """The stream's newline-separated lines, however long (aiohttp's own readline has a limit)."""
    parts: list[bytes] = []  # the line so far, unjoined: joining once per line keeps long lines linear
    size = 0
    async for chunk in content.iter_any():
        if b"\n" not in chunk:
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_EVENT_BYTES:
                raise ClusterError(f"watch of {resource.qualified}: an event longer than "
                                   f"{MAX_EVENT_BYTES} bytes")
            continue
        first, *lines, rest = chunk.split(b"\n")
        for line in (b"".join([*parts, first]), *lines):
            if line.strip():
                yield line
        parts, size = [rest], len(rest)
    if b"".join(parts).strip():
        yield b"".join(parts)


def _decode(raw: bytes) -> Body:
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except ValueError:
        return {"message": raw[:200].decode("utf-8", "replace")}
    return decoded if isinstance(decoded, dict) else {}


def _describe_connection_error(exc: BaseException) -> str:
    """Why the request got no answer, and what to look at; the callers retry (it is an Unavailable)."""
    if isinstance(exc, asyncio.TimeoutError):
        return ("timed out (an overloaded apiserver, or packets dropped on the way: check the route and "
                "firewall to cluster.server)")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error}); check cluster.ca_file"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"{exc.os_error.strerror if exc.os_error else exc}; check the host name in cluster.server"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
        reason = exc.os_error.strerror or str(exc.os_error)
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"{reason} (is the apiserver up, and is cluster.server's port right?)"
        return f"{reason}; check cluster.server and the network path to it"
    return str(exc) or type(exc).__name__
