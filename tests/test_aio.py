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
