"""Issue #12, client side: one asyncio batcher per client, denials answered locally."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.connection import Connection

import distlb.aio as aio

pytestmark = pytest.mark.lua


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many commands each write to the server carried, in order."""
    seen: list[int] = []
    real = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        seen.append(len(command) if isinstance(command, list) else 1)
        await real(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    yield seen


async def test_objects_on_one_client_share_one_write(server_url: str, prefix: str,
                                                     writes: list[int]) -> None:
    c = redis.asyncio.Redis.from_url(server_url)
    try:
        buckets = [aio.TokenBucket(c, f"b{i}", rate_per_s=0.001, burst=1, prefix=prefix)
                   for i in range(64)]
        shaper = aio.TrafficShaper.with_global_limit(c, 0.001, 1, prefix=prefix)
        # warm: the connection exists and the scripts are loaded (NOSCRIPT -> EVAL, once)
        await asyncio.gather(buckets[0].peek(), shaper.peek())
        writes.clear()
        results = await asyncio.gather(*[b.try_acquire() for b in buckets],
                                       shaper.try_acquire())
        assert all(d.allowed and d.source == "store" for d in results)
        # 65 decisions of 65 objects: one write carries them all (per object, 65 writes)
        assert len(writes) <= 2 and sum(writes) == 65, writes
    finally:
        await c.aclose()


def test_each_event_loop_has_its_own_batcher(server_url: str, prefix: str) -> None:
    # A batcher belongs to one loop: a second asyncio.run on the same client must not
    # find the first loop's batcher stuck "flushing" or its futures.
    c = redis.asyncio.Redis.from_url(server_url)
    tb = aio.TokenBucket(c, "b", rate_per_s=0.001, burst=4, prefix=prefix)

    async def two() -> list[bool]:
        ds = await asyncio.gather(tb.try_acquire(), tb.try_acquire())
        await c.connection_pool.disconnect()
        return [d.allowed for d in ds]

    assert asyncio.run(two()) == [True, True]
    assert asyncio.run(two()) == [True, True]
    asyncio.run(c.aclose())
