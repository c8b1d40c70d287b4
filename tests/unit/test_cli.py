"""CLI behaviour that needs no running agent."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from agent import client
from agent.cli import main
from agent.client import EXIT_NOPERM, EXIT_UNAVAILABLE, ClientError


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
