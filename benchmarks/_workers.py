"""Worker processes for the benchmarks (spawned, so they live in an importable module)."""

from __future__ import annotations

import time
from typing import Any

import redis

from distlb import TokenBucket


def hammer(url: str, prefix: str, seconds: float, barrier: Any, out: Any) -> None:
    tb = TokenBucket(redis.Redis.from_url(url), "acc", rate_per_s=500, burst=50, prefix=prefix)
    tb.peek()
    barrier.wait()
    deadline = time.time() + seconds
    admitted = 0
    while time.time() < deadline:
        admitted += tb.try_acquire().allowed
    out.put(admitted)
