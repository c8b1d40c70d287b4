"""CLI behaviour that needs no running agent."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import aiohttp
import pytest

from agent.cli import local_api as client
from agent.cli.local_api import EXIT_NOPERM, EXIT_UNAVAILABLE, ClientError
from agent.cli.main import main, own_listeners
from agent.config import parse_settings


def test_unreadable_socket_says_join_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # Root may open any socket, so the kernel's EACCES is stood in for where aiohttp would meet it.
    async def denied(self: aiohttp.UnixConnector, req: aiohttp.ClientRequest, *_: object) -> None:
        raise aiohttp.ClientConnectorError(req.connection_key, PermissionError(13, "Permission denied"))

    monkeypatch.setattr(aiohttp.UnixConnector, "_create_connection", denied)
    with pytest.raises(ClientError) as err:
        client.call("/run/vmesh-agent/agent.sock", "GET", "/v1/status")
    assert err.value.exit_code == EXIT_NOPERM
    assert "add yourself to group vmesh-agent" in str(err.value)


def test_missing_socket_says_start_the_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == EXIT_UNAVAILABLE
    assert "sudo systemctl start vmesh-agent" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--json"]) == 0
    assert '"version"' in capsys.readouterr().out


def test_discover_leaves_out_the_agents_own_metrics_listener() -> None:
    """`discover` (one-shot) skips the socket at `[metrics] listen`, as the daemon's discovery does, and only that
    one: a listener on another port, or on the same port at another address, is still the machine's."""
    with socket.socket() as metrics, socket.socket() as other, socket.socket() as elsewhere:
        for sock in (metrics, other):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        port = metrics.getsockname()[1]
        elsewhere.bind(("127.0.0.2", port))
        elsewhere.listen()
        inodes = {os.fstat(s.fileno()).st_ino: s for s in (metrics, other, elsewhere)}
        own = own_listeners(parse_settings(f'[metrics]\nlisten = "127.0.0.1:{port}"', require_cluster=False))
        assert [inodes[i] for i in own if i in inodes] == [metrics]
        assert own_listeners(parse_settings("", require_cluster=False)) == []


def test_discover_says_when_discovery_is_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With discovery off, the allow-list hints alone would not register anything: the table says so first."""
    config = tmp_path / "config.toml"
    config.write_text("[discovery]\nenabled = false\n")
    main(["discover", "--config", str(config)])
    assert capsys.readouterr().out.startswith("discovery is off (discovery.enabled = false)")
    main(["discover", "--config", str(config), "--json"])
    assert json.loads(capsys.readouterr().out)["discovery_enabled"] is False
