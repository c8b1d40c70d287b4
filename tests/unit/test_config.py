from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import CheckSettings, ConfigError, Settings, load_settings, parse_listen, parse_settings

BASE = """
vm_name = "vm-a"
[cluster]
server = "https://10.0.0.1:6443"
token_file = "{token}"
"""


@pytest.fixture
def token(tmp_path: Path) -> Path:
    t = tmp_path / "token"
    t.write_text("abc")
    return t


def parse(token: Path, extra: str = "") -> object:
    base = BASE.format(token=token)
    # Top-level keys must come before the first [table].
    return parse_settings(base + "\n" + extra if extra.startswith("[") else extra + "\n" + base)


def test_defaults_follow_the_design(token: Path) -> None:
    s = parse_settings(BASE.format(token=token))
    assert s.namespace == "vm"
    assert s.backend == "endpointslice"
    assert s.discovery.allow == {"mysql": "mysqldb"}
    assert s.heartbeat.interval == 5.0
    assert s.heartbeat.lease_duration == 15.0
    assert s.api.socket == "/run/vmesh-agent/agent.sock"
    assert (s.reaper.brake_fraction, s.reaper.brake_limit) == (0.5, 300.0)


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('namespce = "x"', "namespce", "did you mean 'namespace'"),
        ('[heartbeat]\ninterval = "5"', "heartbeat.interval", "not a duration"),
        ("[heartbeat]\ninterval = 5", "heartbeat.interval", "duration string"),
        ('backend = "consul"', "backend", "not one of"),
        ('[address]\ncidr = "10.0.0.0/33"', "address.cidr", "not a CIDR"),
        ('[[service]]\nname = "db"\nport = 70000', "service[0].port", "not a TCP port"),
        ('[[service]]\nport = 1', "service[0].name", "is required"),
        ('[discovery]\nallow = { mongo = "m" }', "discovery.allow.mongo", "unknown protocol"),
        ('[heartbeat]\ninterval = "20s"', "heartbeat.lease_duration", "longer than heartbeat.interval"),
        ('[heartbeat]\nlease_duration = "6m"', "heartbeat.lease_duration", "at most 300s (5m): the isolation policy"),
    ],
)
def test_each_problem_is_one_line_naming_the_key(token: Path, extra: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(token, extra)
    assert err.value.key == key
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(BASE.format(token=tmp_path / "nope"))
    assert err.value.key == "cluster.token_file"


def test_bad_vm_name(token: Path) -> None:
    with pytest.raises(ConfigError, match="vm_name"):
        parse_settings(BASE.format(token=token).replace('"vm-a"', '"VM_A"'))


def test_bad_toml_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_settings("vm_name = ")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "missing.toml")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    cfg = tmp_path / "config.toml"
    cfg.write_text('vm_name = "a"\n[cluster]\nserver = "https://h:1"\ntoken_file = "token"\n')
    assert load_settings(cfg).cluster.token_file == str(tmp_path / "token")


def test_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    text = example.read_text()
    # The example points at the packaged token path; point it at a real file for the test.
    token = tmp_path / "token"
    token.write_text("t")
    settings = parse_settings(text.replace("/etc/vmesh-agent/token", str(token)))
    assert settings.namespace == "vm"


@pytest.mark.parametrize(("extra", "key"), [
    ('[discovery]\nallow = { mysql = "3db" }', "discovery.allow.mysql"),
    ('[[service]]\nname = "3db"\nport = 3306', "service[0].name"),
    ('[[service]]\nname = "-db"\nport = 3306', "service[0].name"),
    ('[[service]]\nname = "' + "a" * 64 + '"\nport = 3306', "service[0].name"),
])
def test_service_names_are_dns_1035_labels_as_the_apiserver_demands(token: Path, extra: str, key: str) -> None:
    # "3db" is a valid RFC 1123 label (a VM name may be one) but the apiserver refuses it as a Service name.
    with pytest.raises(ConfigError) as err:
        parse(token, extra)
    assert err.value.key == key
    assert "not a valid Service name" in str(err.value)


def test_a_vm_name_may_start_with_a_digit(token: Path) -> None:
    assert parse_settings(BASE.format(token=token).replace('"vm-a"', '"3vm"')).vm_name == "3vm"


def test_auto_check_settings_for_some_protocols_apply_where_they_fit(token: Path) -> None:
    s = parse(token, '[discovery]\nallow = { mysql = "mysqldb", http = "web" }\n'
                     'check = { type = "auto", path = "/healthz" }')
    assert isinstance(s, Settings)
    check = s.discovery.check
    assert (check.kind_for("http"), check.path_for("http")) == ("http", "/healthz")
    assert (check.kind_for("mysql"), check.path_for("mysql")) == ("mysql", "/")


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('[[service]]\nname = "db"\nport = 3306\nprotocol = "mysql"\ncheck = { path = "/healthz" }',
     "service[0].check.path", "only applies to http checks; a mysql service's check is mysql"),
    ('[[service]]\nname = "db"\nport = 1\ncheck = { type = "tcp", path = "/healthz" }',
     "service[0].check.path", "only applies to http checks; this check is tcp"),
    ('[discovery]\ncheck = { type = "tcp", path = "/healthz" }', "discovery.check.path", "only applies to http"),
    ('[[service]]\nname = "web"\nport = 80\nprotocol = "http"\ncheck = { credentials_file = "/x" }',
     "service[0].check.credentials_file", "only applies to mysql checks; a http service's check is http"),
])
def test_a_check_setting_that_cannot_apply_is_refused_naming_the_key(token: Path, extra: str, key: str,
                                                                    words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(token, extra)
    assert err.value.key == key
    assert words in str(err.value)


@pytest.mark.parametrize(("listen", "words"), [
    ("9464", "not HOST:PORT"),
    (":9464", "not HOST:PORT"),
    ("localhost:9464", "not an IP address"),
    ("0.0.0.0:0", "not a TCP port"),
    ("0.0.0.0:70000", "not a TCP port"),
    ("0.0.0.0:http", "not a TCP port"),
    (":::9464", "goes in brackets"),
    ("[10.0.0.1]:9464", "brackets are for IPv6"),
    ("[::1:9464", "goes in brackets"),
])
def test_a_bad_metrics_listener_is_refused_naming_the_key(token: Path, listen: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(token, f'[metrics]\nlisten = "{listen}"')
    assert err.value.key == "metrics.listen"
    assert words in str(err.value)


@pytest.mark.parametrize(("listen", "expected"), [
    ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::]:9464", ("::", 9464)),
    ("[fd00::1]:65535", ("fd00::1", 65535)),
])
def test_metrics_listener_addresses(token: Path, listen: str, expected: tuple[str, int]) -> None:
    settings = parse_settings(BASE.format(token=token) + f'[metrics]\nlisten = "{listen}"\n')
    assert parse_listen(settings.metrics.listen) == expected
    assert parse_settings(BASE.format(token=token)).metrics.listen == ""  # off by default


def test_active_interval_applies_to_auto_http_and_not_to_http_typed_by_hand() -> None:
    auto = CheckSettings()
    assert auto.active_interval == 90.0
    assert [auto.active_interval_for(kind) for kind in ("mysql", "tcp", "http")] == [90.0, 90.0, 90.0]
    assert CheckSettings(type="http").active_interval_for("http") == 0.0
    assert CheckSettings(type="tcp", active_interval=30.0).active_interval_for("tcp") == 30.0


def test_the_retired_test_hook_is_accepted_at_its_old_default_and_refused_otherwise(tmp_path: Path) -> None:
    """`heartbeat.wall_clock_offset` left the product (issue 22: a test hook; tests skew the agent's clock with
    faketime). The conffile shipped since 0.1.0 still says `wall_clock_offset = 0`: that must keep parsing."""
    (tmp_path / "token").write_text("t")
    base = (f'vm_name = "vm-a"\n[cluster]\nserver = "https://10.0.0.1:6443"\ntoken_file = "{tmp_path / "token"}"\n'
            "[heartbeat]\n")
    assert parse_settings(base + "wall_clock_offset = 0\n").heartbeat.interval == 5.0
    assert not hasattr(parse_settings(base + "wall_clock_offset = 0.0\n").heartbeat, "wall_clock_offset")
    for value in ("30", "true", '"0"'):
        with pytest.raises(ConfigError, match=r"heartbeat.wall_clock_offset: no longer a setting: .*faketime"):
            parse_settings(base + f"wall_clock_offset = {value}\n")
