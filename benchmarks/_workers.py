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


def watch_breaker(url: str, prefix: str, ready: Any, out: Any) -> None:
    """Spin on a closed breaker; report the monotonic time it is first seen open."""
    from distlb import CircuitBreaker

    cb = CircuitBreaker(redis.Redis.from_url(url), "watched", prefix=prefix, open_timeout_s=60)
    cb.can_attempt()
    while cb._subscribed_since() is None:
        time.sleep(0.001)
    ready.put(True)
    while cb.can_attempt().allowed:
        time.sleep(0.0001)
    out.put(time.monotonic())
