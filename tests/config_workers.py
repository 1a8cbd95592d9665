"""A worker process for tests/test_poolconfig.py: one pool of the fleet, polling (no pub/sub),
reporting when the fleet-wide configuration reached it and whether it obeys it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from distlb import BreakerSettings, LoadBalancer, RateLimited
from tests.workers import make_client


def follow_config(target: dict[str, Any], prefix: str, wid: int, refresh_s: float,
                  want_rate: float, want_threshold: int, barrier: Any, out: Any) -> None:
    lb = LoadBalancer(make_client(target), "fleet", refresh_s=refresh_s, subscribe=False,
                      breaker=BreakerSettings(failure_threshold=1000), prefix=prefix)
    reads: list[tuple[float, int]] = []          # (local time the read left, version seen)
    follower = lb._fleet_config
    plain_read = follower.read

    def read(known: str | None = None) -> Any:
        sent = time.time()
        call = plain_read(known)

        def parse(reply: Any) -> Any:
            result = call.parse(reply)
            reads.append((sent, follower.version))
            return result
        return dataclasses.replace(call, parse=parse)

    follower.read = read  # type: ignore[method-assign]
    lb.select_backend()                           # the first refresh: nothing stored yet
    barrier.wait()
    out.put(("ready", wid))
    deadline = time.time() + 60
    seen_at = None
    while time.time() < deadline:
        lb.select_backend()                       # the pool's refresh runs here when due
        cb = lb.breaker_for("b1")
        if (lb.rate_limit is not None and lb.rate_limit.rate_per_s == want_rate
                and cb is not None and cb.failure_threshold == want_threshold):
            seen_at = time.time()
            break
        time.sleep(0.01)
    denied = False
    if seen_at is not None:                       # obeys: the pool's limit now refuses calls
        for _ in range(1000):
            try:
                lb.execute(lambda b: None)
            except RateLimited:
                denied = True
                break
    lb.close()
    out.put(("done", wid, seen_at, denied, reads))
