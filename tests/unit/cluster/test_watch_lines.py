"""Watch streams: one event per line, however long the line, without relying on aiohttp's line limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest

from agent.cluster.errors import ClusterError
from agent.cluster.kube import MAX_EVENT_BYTES, _lines
from agent.cluster.resources import LEASES


class Chunks:
    """What aiohttp hands over: arbitrary chunks, split anywhere."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def lines(*chunks: bytes) -> list[bytes]:
    return [line async for line in _lines(cast(aiohttp.StreamReader, Chunks(*chunks)), LEASES)]


async def test_lines_are_joined_across_chunks_and_blank_lines_skipped() -> None:
    assert await lines(b'{"a":', b'1}\n\n{"b"', b':2}\n{"c":3}') == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


async def test_a_line_far_longer_than_aiohttps_limits_is_one_event() -> None:
    big = b'{"x":"' + b"y" * (5 << 20) + b'"}'
    chunks = [big[i:i + 65536] for i in range(0, len(big), 65536)]
    assert await lines(*chunks, b"\n") == [big]


async def test_a_line_past_the_event_bound_is_a_cluster_error() -> None:
    with pytest.raises(ClusterError, match="longer than"):
        await lines(*(b"z" * (1 << 20) for _ in range(MAX_EVENT_BYTES // (1 << 20) + 2)))
