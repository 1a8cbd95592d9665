"""A worker process for tests/test_poolconfig.py: one pool of the fleet, polling (no pub/sub),
reporting when the fleet-wide configuration reached it and whether it obeys it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from distlb import BreakerSettings, LoadBalancer, RateLimited
from tests.workers import make_client


def _record_reads(lb: LoadBalancer) -> tuple[Any, list[tuple[float, int]]]:
    """The pool's config follower, its reads recorded as (local time the read left,
    version seen once its reply was parsed)."""
    reads: list[tuple[float, int]] = []
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
    return follower, reads


def follow_config(target: dict[str, Any], prefix: str, wid: int, refresh_s: float,
                  want_rate: float, want_threshold: int, barrier: Any, out: Any) -> None:
    lb = LoadBalancer(make_client(target), "fleet", refresh_s=refresh_s, subscribe=False,
                      breaker=BreakerSettings(failure_threshold=1000), prefix=prefix)
    _, reads = _record_reads(lb)
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


def follow_vnodes(target: dict[str, Any], prefix: str, wid: int, refresh_s: float,
                  keys: list[str], want: list[str], barrier: Any, out: Any) -> None:
    """A process of a consistent-hash pool (polling): reports when the stored
    ``strategy.vnodes`` reached it, and every lookup made with it in force that did not
    answer like a ring built with it (the ring must be rebuilt at once, not at the next
    registry change)."""
    from distlb import Context
    from distlb.strategies import ConsistentHashBalancer

    lb = LoadBalancer(make_client(target), "ring", ConsistentHashBalancer(vnodes=150),
                      refresh_s=refresh_s, subscribe=False, prefix=prefix)
    follower, reads = _record_reads(lb)
    before = [lb.select_backend(Context(key=k)).id for k in keys]
    barrier.wait()
    out.put(("ready", wid, before))
    deadline = time.time() + 60
    seen_at, stale = None, 0
    while time.time() < deadline:
        lb.select_backend(Context(key=keys[0]))   # the pool's refresh runs here when due
        version = follower.version
        answers = [lb.select_backend(Context(key=k)).id for k in keys]
        if version >= 1:
            if answers != want:
                stale += 1                        # vnodes in force, the old ring still used
            elif seen_at is None:
                seen_at = time.time()
            if seen_at is not None and time.time() - seen_at > refresh_s:
                break                             # and it stays so over a refresh
        time.sleep(0.01)
    vnodes = getattr(lb.strategy, "vnodes", None)
    lb.close()
    out.put(("done", wid, seen_at, stale, vnodes, reads))
