"""The CLI's side of the local API: one request over the unix socket, with errors a person can act on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the agent is not running
EXIT_NOPERM = 77  # EX_NOPERM: the socket is not ours to open


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def _request(socket_path: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=socket_path)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, f"http://vmesh-agent{path}", json=body) as response,
        ):
            return response.status, await response.text()
    except aiohttp.ClientConnectorError as exc:
        error = exc.os_error
        if isinstance(error, PermissionError):
            raise ClientError(
                f"cannot open {socket_path}: permission denied; add yourself to group vmesh-agent "
                "(sudo usermod -aG vmesh-agent $USER, then log in again) or use sudo", EXIT_NOPERM) from None
        raise ClientError(
            f"vmesh-agent is not running (nothing answers on {socket_path}); "
            "start it with: sudo systemctl start vmesh-agent", EXIT_UNAVAILABLE) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ClientError(f"no answer from the agent on {socket_path}: {exc or 'timed out'}",
                          EXIT_UNAVAILABLE) from None


def call(socket_path: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body or text)."""
    status, text = asyncio.run(_request(socket_path, method, path, body))
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text
