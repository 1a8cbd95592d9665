"""Worker functions for the integration tests, run in real child processes (spawn)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from distlb import BreakerSettings, LoadBalancer, RetryPolicy
from distlb.integrations.httpx import LoadBalancedTransport


def httpx_client(url: str, prefix: str, duration_s: float, barrier: Any, out: Any) -> None:
    """One client process: GETs through a LoadBalancedTransport on the shared pool."""
    lb = LoadBalancer(redis.Redis.from_url(url), "users", prefix=prefix,
                      retry_policy=RetryPolicy.fixed(0.0, max_attempts=3),
                      breaker=BreakerSettings(failure_threshold=3, open_timeout_s=0.3,
                                              success_threshold=1, half_open_max_requests=1))
    codes: dict[int, int] = {}
    with httpx.Client(mounts={"http://users": LoadBalancedTransport(lb)}, timeout=5) as c:
        lb.backends()                                   # connect before the clock starts
        barrier.wait()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            code = c.get("http://users/work").status_code
            codes[code] = codes.get(code, 0) + 1
    lb.close()
    out.put({"codes": codes})
