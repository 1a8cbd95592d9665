"""distlb.aio: the same behaviour through redis.asyncio, with coalesced pipelines."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio

import distlb.aio as aio
from distlb import RateLimited

pytestmark = pytest.mark.lua
ROOT = Path(__file__).resolve().parent.parent


def test_generated_asyncio_shell_is_current() -> None:
    done = subprocess.run([sys.executable, "tools/gen_aio.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("protocol, decode", [(2, False), (3, True)])
async def test_concurrent_tasks_share_the_limit_exactly(server_url: str, prefix: str,
                                                        protocol: int, decode: bool) -> None:
    c = redis.asyncio.Redis.from_url(server_url, protocol=protocol, decode_responses=decode)
    tb = aio.TokenBucket(c, "api", rate_per_s=0.001, burst=50, prefix=prefix)
    results = await asyncio.gather(*[tb.try_acquire() for _ in range(200)])
    assert sum(d.allowed for d in results) == 50
    assert all(d.source == "store" for d in results)
    await c.aclose()


async def test_shaper_and_leaky_and_priority(ar: redis.asyncio.Redis, prefix: str) -> None:
    shaper = aio.TrafficShaper.with_global_limit(ar, 1000, 5, client_limit=aio.Limit(1, 2),
                                                 prefix=prefix)
    # Slow refills: the counts below are exact however long a busy machine takes.
    await shaper.set_client_rate_limit("vip", 0.01, 4)
    assert await shaper.limits() == {"c:vip": aio.Limit(0.01, 4)}
    vip = await asyncio.gather(*[shaper.try_acquire("vip") for _ in range(6)])
    assert sum(d.allowed for d in vip) == 4
    d = await shaper.try_acquire("pleb")
    assert d.allowed
    lb = aio.LeakyBucket(ar, "out", rate_per_s=0.01, capacity=3, prefix=prefix)
    ds = await asyncio.gather(*[lb.try_acquire() for _ in range(4)])
    assert sorted(d.allowed for d in ds) == [False, True, True, True]
    pq = aio.PriorityLimiter(ar, "pq", rate_per_s=50, burst=1, prefix=prefix)
    assert (await pq.try_acquire(1)).allowed
    assert (await pq.acquire(1, timeout_s=1)).allowed


async def test_acquire_raises_after_timeout(ar: redis.asyncio.Redis, prefix: str) -> None:
    tb = aio.TokenBucket(ar, "api", rate_per_s=0.5, burst=1, prefix=prefix)
    await tb.try_acquire()
    with pytest.raises(RateLimited):
        await tb.acquire(timeout_s=0.05)


async def test_cancelled_priority_waiter_leaves_the_queue(ar: redis.asyncio.Redis,
                                                          prefix: str) -> None:
    pq = aio.PriorityLimiter(ar, "pq", rate_per_s=0.1, burst=1, prefix=prefix)
    await pq.try_acquire(0)
    task = asyncio.create_task(pq.acquire(3, timeout_s=30))
    deadline = time.monotonic() + 30
    while await ar.zcard(f"{prefix}:{{pq:pq}}:queue") != 1:     # the waiter queued
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ar.zcard(f"{prefix}:{{pq:pq}}:queue") == 0


async def test_without_auto_pipeline(ar: redis.asyncio.Redis, prefix: str) -> None:
    tb = aio.TokenBucket(ar, "api", rate_per_s=0.001, burst=3, prefix=prefix)
    tb._run.__self__.auto_pipeline = False  # type: ignore[attr-defined]
    results = await asyncio.gather(*[tb.try_acquire() for _ in range(5)])
    assert sum(d.allowed for d in results) == 3
