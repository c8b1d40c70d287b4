"""The local API's socket file, with a real aiohttp server on a real unix socket: stop removes only its own."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import cast

import structlog

from agent.api.agent_view import AgentView
from agent.api.metrics import AgentMetrics
from agent.api.server import ApiServer


def server_at(path: Path) -> ApiServer:
    """No request is made: the agent is never asked."""
    return ApiServer(cast("AgentView", None), str(path), metrics=AgentMetrics(), log=structlog.get_logger())


async def test_stop_leaves_a_socket_file_that_another_server_made_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    first = server_at(path)
    await first.start()
    os.unlink(path)  # removed by hand (or by a careless script) while the first still runs...
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second:
        second.bind(str(path))  # ...and another agent now serves there
        second.listen()
        inode = os.stat(path).st_ino
        await first.stop()
        assert path.exists() and os.stat(path).st_ino == inode, "the other agent's socket stays"


async def test_stop_removes_its_own_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = server_at(path)
    await server.start()
    assert path.exists()
    await server.stop()
    assert not path.exists()
