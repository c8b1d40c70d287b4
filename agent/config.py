"""The agent's settings: TOML read with tomllib, validated into typed, frozen dataclasses.

Every problem is reported as one ConfigError naming the key path, e.g.
``heartbeat.interval: "5" is not a duration; write it with a unit, e.g. "500ms", "5s", "1m"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import socket
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import protocols
from agent.durations import parse_duration
from agent.health.credentials import load_credentials
from agent.stop_kind import SWITCHES

# RFC 1123 label: the VM name becomes part of object names such as mysqldb-<vm>.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# RFC 1035 label, what the apiserver demands of a Service name: it must start with a letter
# ("3db" is refused).
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
BACKENDS = ("endpointslice", "endpoints", "workloadentry", "externalworkload")
MAX_REAPER_SLOTS = 16
MAX_LEASE_DURATION = 300.0  # packaging/kubernetes/policy.yaml's bound on a reaper slot's leaseDurationSeconds
PROTOCOLS = protocols.NAMES
# Keys that are no longer settings but that a config may still hold: the conffile shipped since 0.1.0 names
# them with their old default, which is accepted and ignored (changing a conffile makes dpkg ask on every
# upgrade); any other value is refused, saying why.
RETIRED: dict[str, tuple[float, str]] = {
    "heartbeat.wall_clock_offset": (0, "it was a test hook; to try a VM whose clock is off, run the agent "
                                       "under Debian's faketime with FAKETIME_DONT_FAKE_MONOTONIC=1"),
}


class ConfigError(Exception):
    """A config problem, phrased as one line that names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.path = ""  # the file, when the error came from one


def _duration(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"duration": True})


@dataclass(frozen=True)
class ClusterSettings:
    kubeconfig: str = ""
    context: str = ""
    server: str = ""
    ca_file: str = ""
    token_file: str = ""
    request_timeout: float = _duration("10s")
    # The agent renews its own token (TokenRequest) at this fraction of its lifetime.
    token_renew_fraction: float = 0.8


@dataclass(frozen=True)
class AddressSettings:
    address: str = ""
    interface: str = ""
    cidr: str = ""


@dataclass(frozen=True)
class CheckSettings:
    type: str = "auto"  # auto: by protocol (mysql -> mysql, http -> http, others -> tcp)
    interval: float = _duration("1s")
    timeout: float = _duration("1s")
    rise: int = 2
    fall: int = 2
    path: str = "/"  # http
    command: tuple[str, ...] = ()  # exec: program and arguments, no shell
    credentials_file: str = ""  # mysql: TOML with user and password, not readable by others
    # mysql without credentials, tcp, http with type "auto": how often the server itself is asked (a login
    # probe, a connect, a GET: each one a line in its log); the socket table is read every `interval`
    # (agent/health/guard.py).
    active_interval: float = _duration("90s")

    def kind_for(self, protocol: str) -> str:
        if self.type != "auto":
            return self.type
        return protocols.auto_check(protocol)

    def path_for(self, kind: str) -> str:
        """With type "auto", `path` is for the http checks only; the other kinds ignore it."""
        return self.path if kind == "http" else "/"

    def active_interval_for(self, kind: str) -> float:
        """How often the server is asked; 0: at every check. An http check typed by hand (type = "http") GETs
        at every check: its answer (a 503 from a listening server) is what it is for, and the admin who chose
        its path can keep it out of the access log. Discovered http (type "auto") is asked every
        active_interval."""
        return 0.0 if kind == "http" and self.type == "http" else self.active_interval

    def credentials_for(self, kind: str) -> str:
        """With type "auto", `credentials_file` is for the mysql checks only; the other kinds ignore it."""
        return self.credentials_file if kind == "mysql" else ""


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    port: int
    protocol: str = "tcp"
    check: CheckSettings = field(default_factory=CheckSettings)


@dataclass(frozen=True)
class DiscoverySettings:
    enabled: bool = True
    interval: float = _duration("10s")
    probe_timeout: float = _duration("1s")
    # A service that stops listening stays registered, not ready, this long before it is removed.
    remove_after: float = _duration("1m")
    check: CheckSettings = field(default_factory=CheckSettings)  # for discovered services
    allow: dict[str, str] = field(default_factory=lambda: {"mysql": "mysqldb"})


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: float = _duration("5s")
    lease_duration: float = _duration("15s")
    # The fleet's Lease writes per second at most: each VM renews every max(interval, fleet / write_budget), a
    # little slower, its Lease lasting lease_duration / interval times that (300 s at most), so the
    # apiserver's heartbeat load stays bounded however many VMs there are (agent/lease/pace.py). 250: 1,000
    # VMs renew every 5 s; 10,000 every 45 s. 0: never scaled. (Not in config.example.toml:
    # that file is a conffile.)
    write_budget: float = 250.0


@dataclass(frozen=True)
class SyncSettings:
    # The backstop: a full comparison with the cluster. Edits and deletions are repaired from the watch of
    # the VM's own objects as they happen; this only catches what a watch could miss.
    resync_interval: float = _duration("5m")
    stop_deadline: float = _duration("10s")
    # On shutdown the endpoints are marked terminating and held so this long before they are removed, so that
    # consumers that propagate slowly (istiod) move traffic away first. Inside stop_deadline.
    drain: float = _duration("1s")
    # Whether a stop removes the VM's objects (agent.stop_kind): "auto" keeps them over a restart under
    # systemd and removes them on a stop for good, at shutdown and outside systemd; "always" removes on every
    # stop; "never" on none (the Lease expiry and the reapers do it).
    deregister_on_stop: str = "auto"


@dataclass(frozen=True)
class ReaperSettings:
    enabled: bool = True
    grace: float = _duration("5s")
    # Reaper slots: Leases vmesh-reaper-0..slots-1, each held by one agent;
    # only holders watch the VMs' Leases.
    slots: int = 2
    # How often an agent that holds no slot looks at the slots (one LIST), to take one that was let go.
    slot_check: float = _duration("30s")
    # Reap nothing while more than this fraction of the VMs' Leases expire within one lease duration.
    brake_fraction: float = 0.5
    # In a small fleet (SMALL_FLEET VMs or fewer, agent/lease/reaper.py) the brake holds at most this long
    # while this reaper keeps renewing its own Lease: two of three VMs dying together are reaped, not kept
    # ready for ever. "0s": no limit. (Not in config.example.toml: that file is a conffile,
    # shipped unchanged since 0.1.0.)
    brake_limit: float = _duration("5m")


@dataclass(frozen=True)
class EndpointsSettings:
    service_account: str = ""  # annotation alpha.istio.io/kubernetes-serviceaccounts on the Service


@dataclass(frozen=True)
class WorkloadEntrySettings:
    service_account: str = ""
    network: str = ""


@dataclass(frozen=True)
class ExternalWorkloadSettings:
    identity: str = "spiffe://root.linkerd.cluster.local/{vm}"
    server_name: str = "{vm}.cluster.local"


@dataclass(frozen=True)
class ApiSettings:
    socket: str = "/run/vmesh-agent/agent.sock"


@dataclass(frozen=True)
class MetricsSettings:
    # "HOST:PORT" ("[::]:9464" for IPv6): a TCP listener for /metrics and /v1/health; off when ""
    listen: str = ""


@dataclass(frozen=True)
class LogSettings:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class Settings:
    vm_name: str = ""
    namespace: str = "vm"
    backend: str = "endpointslice"
    state_dir: str = "/var/lib/vmesh-agent"
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    address: AddressSettings = field(default_factory=AddressSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    service: tuple[ServiceSettings, ...] = ()
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    reaper: ReaperSettings = field(default_factory=ReaperSettings)
    endpoints: EndpointsSettings = field(default_factory=EndpointsSettings)
    workloadentry: WorkloadEntrySettings = field(default_factory=WorkloadEntrySettings)
    externalworkload: ExternalWorkloadSettings = field(default_factory=ExternalWorkloadSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)


def load_settings(path: str | Path, *, require_cluster: bool = True) -> Settings:
    """Read and validate a config file; raise ConfigError on the first problem.

    `require_cluster=False` is for commands that never talk to the cluster (`discover`).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from exc
    return parse_settings(text, base_dir=Path(path).parent, require_cluster=require_cluster)


def parse_settings(text: str, base_dir: Path | None = None, *, require_cluster: bool = True) -> Settings:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}") from exc
    try:
        settings = _build(Settings, raw, "")
        return _validate(settings, base_dir or Path.cwd(), require_cluster)
    except ConfigError as exc:
        line = line_of(text, exc.key)
        if line:
            raise ConfigError(exc.key, f"{exc.args[0].split(': ', 1)[-1]} (line {line})") from None
        raise


def line_of(text: str, key: str) -> int | None:
    """The line where a key path such as "heartbeat.interval" or "service[1].check.type" is set, if found."""
    if not key:
        return None
    parts = [p for p in re.split(r"[.\[\]]", key) if p and not p.isdigit()]
    index = int(m.group(1)) if (m := re.search(r"\[(\d+)\]", key)) else 0
    table: list[str] = []
    seen_arrays: dict[str, int] = {}
    best: int | None = None
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if header := re.fullmatch(r"\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?", line):
            table = header.group(1).split(".")
            if line.startswith("[["):
                seen_arrays[header.group(1)] = seen_arrays.get(header.group(1), -1) + 1
            continue
        if "=" not in line:
            continue
        name = line.split("=", 1)[0].strip().strip('"')
        full = [*table, *name.split(".")]
        in_right_item = not table or table[0] not in seen_arrays or seen_arrays[table[0]] == index
        if full == parts[: len(full)] and in_right_item:
            best = number  # the key itself, or the inline table that holds it
    if best is None:  # a table's own name, or a key missing from it: point at the table's header
        best = header_line(text, parts, index)
    return best


def header_line(text: str, parts: list[str], index: int) -> int | None:
    """The line of the [table] (or the index-th [[array]] item) that the key path is in, if any."""
    found: int | None = None
    seen: dict[str, int] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        header = re.fullmatch(r"(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?", raw_line.split("#", 1)[0].strip())
        if not header:
            continue
        names = header.group(2).split(".")
        if header.group(1) == "[[":
            seen[header.group(2)] = seen.get(header.group(2), -1) + 1
            if seen[header.group(2)] != index:
                continue
        if names == parts[: len(names)]:
            found = number
    return found


def _build(cls: type[Any], raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a table, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    raw = {key: value for key, value in raw.items() if not _retired(_join(path, key), value)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(_join(path, key), f"unknown key{hint}")
    missing = [
        name for name, f in fields.items()
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(_join(path, missing[0]), "is required")
    values = {
        key: _convert(hints[key], value, _join(path, key), fields[key].metadata.get("duration", False))
        for key, value in raw.items()
    }
    return cls(**values)


def _retired(key: str, value: Any) -> bool:
    """Whether `key` is a retired setting holding its old default (accepted, and ignored); ConfigError if it
    holds anything else."""
    if key not in RETIRED:
        return False
    default, why = RETIRED[key]
    if type(value) in (int, float) and value == default:
        return True
    raise ConfigError(key, f"no longer a setting: {why}; remove it")


def _convert(hint: Any, value: Any, path: str, is_duration: bool) -> Any:
    origin = typing.get_origin(hint)
    if is_duration:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a duration string such as \"5s\", got {_describe(value)}")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
        if seconds <= 0:
            raise ConfigError(path, "must be longer than zero")
        return seconds
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, path)
    if origin is tuple and typing.get_args(hint)[0] is str:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(path, f"expected an array of strings, got {_describe(value)}")
        return tuple(value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(path, f"expected an array of tables ([[{path}]]), got {_describe(value)}")
        return tuple(_convert(item, v, f"{path}[{i}]", False) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(path, f"expected a table of strings, got {_describe(value)}")
        return dict(value)
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise ConfigError(path, f"expected a {hint.__name__}, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {_describe(value)}")
        return float(value)
    raise TypeError(f"unsupported settings type {hint!r} at {path}")  # a bug in this module


def _validate_heartbeat(h: HeartbeatSettings) -> None:
    if not (h.write_budget >= 0 and math.isfinite(h.write_budget)):
        raise ConfigError("heartbeat.write_budget", f"must be a number of Lease writes per second >= 0 "
                          f"(0: the interval is never scaled with the fleet), got {h.write_budget:g}")
    if h.lease_duration <= h.interval:
        raise ConfigError("heartbeat.lease_duration", "must be longer than heartbeat.interval")
    if h.lease_duration > MAX_LEASE_DURATION:  # the reaper slots carry it, and the policy caps them
        raise ConfigError("heartbeat.lease_duration", f"at most {MAX_LEASE_DURATION:g}s (5m): the isolation "
                          "policy refuses longer reaper slots, and peers wait out no longer one")


def _validate(s: Settings, base_dir: Path, require_cluster: bool = True) -> Settings:
    vm_name = s.vm_name or socket.gethostname().split(".")[0].lower()
    if not DNS_LABEL.match(vm_name):
        raise ConfigError(
            "vm_name",
            f"{vm_name!r} cannot be part of a Kubernetes object name; use lowercase letters, digits and '-'",
        )
    if not DNS_LABEL.match(s.namespace):
        raise ConfigError("namespace", f"{s.namespace!r} is not a valid namespace name")
    if s.backend not in BACKENDS:
        raise ConfigError("backend", f"{s.backend!r} is not one of {', '.join(BACKENDS)}")
    cluster = _validate_cluster(s.cluster, base_dir) if require_cluster else s.cluster
    if s.address.address:
        try:
            ipaddress.ip_address(s.address.address)
        except ValueError:
            raise ConfigError("address.address", f"{s.address.address!r} is not an IP address") from None
    if s.address.cidr:
        try:
            ipaddress.ip_network(s.address.cidr, strict=False)
        except ValueError:
            raise ConfigError("address.cidr",
                              f"{s.address.cidr!r} is not a CIDR such as 10.0.0.0/24") from None
    for protocol, name in s.discovery.allow.items():
        if protocol not in PROTOCOLS:
            raise ConfigError(f"discovery.allow.{protocol}",
                              f"unknown protocol; use one of {', '.join(PROTOCOLS)}")
        _validate_service_name(f"discovery.allow.{protocol}", name)
    for i, svc in enumerate(s.service):
        _validate_service_name(f"service[{i}].name", svc.name)
        if not 1 <= svc.port <= 65535:
            raise ConfigError(f"service[{i}].port", f"{svc.port} is not a TCP port (1-65535)")
        if svc.protocol not in PROTOCOLS:
            raise ConfigError(f"service[{i}].protocol",
                              f"unknown protocol; use one of {', '.join(PROTOCOLS)}")
    discovery = dataclasses.replace(s.discovery,
                                    check=_validate_check("discovery.check", s.discovery.check, base_dir))
    services = tuple(dataclasses.replace(svc, check=_validate_check(f"service[{i}].check", svc.check,
                                                                    base_dir, protocol=svc.protocol))
                     for i, svc in enumerate(s.service))
    _validate_heartbeat(s.heartbeat)
    for key in ("identity", "server_name"):
        template = getattr(s.externalworkload, key)
        try:
            template.format(vm=vm_name, namespace=s.namespace, service="svc")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"externalworkload.{key}", f"{template!r} is not a valid template "
                              f"({exc}); use {{vm}}, {{namespace}}, {{service}}") from None
    if s.sync.deregister_on_stop not in SWITCHES:
        raise ConfigError("sync.deregister_on_stop",
                          f"{s.sync.deregister_on_stop!r} is not one of {', '.join(SWITCHES)}")
    if s.sync.drain >= s.sync.stop_deadline:
        raise ConfigError("sync.drain", f"must be shorter than sync.stop_deadline "
                          f"({s.sync.stop_deadline:g}s): the drain is part of the stop")
    if not 1 <= s.reaper.slots <= MAX_REAPER_SLOTS:
        raise ConfigError("reaper.slots", f"{s.reaper.slots} is not between 1 and {MAX_REAPER_SLOTS}")
    if not 0 < s.reaper.brake_fraction <= 1:
        raise ConfigError("reaper.brake_fraction", f"{s.reaper.brake_fraction} is not a fraction above 0 and "
                          "at most 1 (1 turns the brake off)")
    if s.metrics.listen:
        parse_listen(s.metrics.listen)
    if s.log.format not in ("auto", "console", "json"):
        raise ConfigError("log.format", f"{s.log.format!r} is not one of auto, console, json")
    if s.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level", f"{s.log.level!r} is not one of debug, info, warning, error")
    return dataclasses.replace(s, vm_name=vm_name, cluster=cluster, discovery=discovery, service=services)


CHECK_KINDS = ("auto", "tcp", "mysql", "http", "exec")


def parse_listen(value: str, key: str = "metrics.listen") -> tuple[str, int]:
    """"HOST:PORT" with an IP address as HOST ("0.0.0.0:9464", "127.0.0.1:9464", "[::]:9464")
    -> (host, port)."""
    example = 'use an IP address and a port, such as "127.0.0.1:9464", "0.0.0.0:9464" or "[::]:9464"'
    host, colon, port_text = value.rpartition(":")
    if not colon or not host:
        raise ConfigError(key, f"{value!r} is not HOST:PORT; {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ConfigError(key, f"{value!r}: brackets are for IPv6 addresses only; {example}")
    elif ":" in host:
        raise ConfigError(key, f"{value!r}: an IPv6 address goes in brackets, as in \"[::]:9464\"")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, f"{host!r} is not an IP address; {example}") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, f"{port_text!r} is not a TCP port (1-65535); {example}")
    return host, int(port_text)


def _validate_service_name(key: str, name: str) -> None:
    """As the apiserver validates a Service's name (DNS-1035 label),
    so that no name is refused there forever."""
    if _DNS_1035_LABEL.match(name):
        return
    if name and len(name) > 63:
        raise ConfigError(key, f"{name!r} is not a valid Service name: longer than 63 characters")
    raise ConfigError(key, f"{name!r} is not a valid Service name: use lowercase letters, digits and '-', "
                           "starting with a letter and ending with a letter or digit (DNS-1035 label)")


def _validate_check(key: str, c: CheckSettings, base_dir: Path, protocol: str = "") -> CheckSettings:
    """Check one check's settings; returns them with credentials_file made absolute.

    `protocol` is the declared service's; "" for discovery.check, whose "auto" type serves every protocol and
    so applies `path` to http checks and `credentials_file` to mysql checks only.
    """
    if c.type not in CHECK_KINDS:
        raise ConfigError(f"{key}.type", f"{c.type!r} is not one of {', '.join(CHECK_KINDS)}")
    kind = c.kind_for(protocol) if protocol or c.type != "auto" else "auto"
    what = f"a {protocol} service's check is {kind}" if c.type == "auto" else f"this check is {kind}"
    if c.path != "/" and kind not in ("http", "auto"):
        raise ConfigError(f"{key}.path", f"only applies to http checks; {what}")
    if c.credentials_file and kind not in ("mysql", "auto"):
        raise ConfigError(f"{key}.credentials_file", f"only applies to mysql checks; {what}")
    if c.rise < 1 or c.fall < 1:
        raise ConfigError(f"{key}.{'rise' if c.rise < 1 else 'fall'}", "must be at least 1")
    if c.type == "exec" and not c.command:
        raise ConfigError(f"{key}.command", "is required for an exec check (program and arguments)")
    if c.command and c.type != "exec":
        raise ConfigError(f"{key}.command", "only applies to type = \"exec\"")
    if not c.path.startswith("/"):
        raise ConfigError(f"{key}.path", f"{c.path!r} must start with '/'")
    if c.credentials_file:
        path = (c.credentials_file if Path(c.credentials_file).is_absolute()
                else str(base_dir / c.credentials_file))
        try:
            load_credentials(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}.credentials_file", str(exc)) from None
        return dataclasses.replace(c, credentials_file=path)
    return c


def _validate_cluster(c: ClusterSettings, base_dir: Path) -> ClusterSettings:
    def resolve(key: str, value: str) -> str:
        if not value:
            return value
        p = (base_dir / value).resolve() if not Path(value).is_absolute() else Path(value)
        if not p.is_file():
            raise ConfigError(f"cluster.{key}", f"file {str(p)!r} does not exist")
        return str(p)

    if not 0 < c.token_renew_fraction < 1:
        raise ConfigError("cluster.token_renew_fraction", f"{c.token_renew_fraction} is not a fraction "
                          "between 0 and 1 (0.8: renew when 80 % of the token's lifetime has passed)")
    if c.kubeconfig and (c.server or c.token_file):
        raise ConfigError("cluster.kubeconfig", "set either kubeconfig, or server with token_file, not both")
    if not c.kubeconfig:
        if not c.server:
            raise ConfigError("cluster.server",
                              "set cluster.server (https://host:port) or cluster.kubeconfig")
        if not c.server.startswith("https://"):
            raise ConfigError("cluster.server", f"{c.server!r} must be an https:// URL")
        if not c.token_file:
            raise ConfigError("cluster.token_file", "is required with cluster.server")
    return dataclasses.replace(
        c,
        kubeconfig=resolve("kubeconfig", c.kubeconfig),
        ca_file=resolve("ca_file", c.ca_file),
        token_file=resolve("token_file", c.token_file),
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)
    return f"{kind} ({value!r})" if not isinstance(value, dict | list) else kind


