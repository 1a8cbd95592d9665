"""A fleet worker for the fault suite: drives every shared primitive and writes down
where each decision came from.

Runs in a real child process (multiprocessing, spawn). For every primitive it keeps
the number of calls answered by the store, by the failure policy and by a local
cache, every unexpected exception, and the *changes* of source over time (so the
parent can see when a primitive left the store and when it came back) without
shipping one record per call across the process boundary.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from distlb import (
    AdaptiveCircuitBreaker,
    Backend,
    DistlbError,
    LoadBalancer,
    NoBackendAvailable,
    RetryBudget,
    TokenBucket,
    TrafficShaper,
)

#: The README's recommended client settings for limiters: short timeouts, no client retries.
FAST: dict[str, Any] = dict(socket_timeout=0.2, socket_connect_timeout=0.2,
                            retry=Retry(NoBackoff(), 0))

#: Each primitive with the failure policy it runs under in the suite, so that every
#: policy is exercised during one outage.
POLICIES = {"bucket": "local", "shaper": "fail_closed", "breaker": "fail_open",
            "budget": "fail_open", "pool": "fail_open"}
PROCESSES = 3
NO_BACKEND = object()


def backends(n: int = 3) -> list[Backend]:
    return [Backend(f"b{i}", f"127.0.0.1:{9000 + i}") for i in range(n)]


class Track:
    """Where one primitive's decisions came from, as counts and source changes."""

    def __init__(self, name: str, stats: Callable[[], Any]) -> None:
        self.name = name
        self.stats = stats
        self.counts = {"store": 0, "policy": 0, "cache": 0}
        self.changes: list[tuple[float, str]] = []   # (wall time, new source)
        self.errors: list[str] = []
        self.denied = {"store": 0, "policy": 0}
        self.admitted = {"store": 0, "policy": 0}

    def run(self, fn: Callable[[], Any]) -> Any:
        before = self.stats()
        calls, fallbacks = before.calls, before.fallbacks
        try:
            result = fn()
        except NoBackendAvailable:
            result = NO_BACKEND    # an empty registry is a state, counted by the caller
        except DistlbError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        except Exception as exc:   # anything else reaching a caller is a bug
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        after = self.stats()
        source = ("policy" if after.fallbacks > fallbacks
                  else "store" if after.calls > calls else "cache")
        self.counts[source] += 1
        if not self.changes or self.changes[-1][1] != source:
            self.changes.append((time.time(), source))
        allowed = getattr(result, "allowed", None)
        if allowed is not None and source != "cache":
            (self.admitted if allowed else self.denied)[source] += 1
        return result

    def report(self) -> dict[str, Any]:
        return {"counts": self.counts, "changes": self.changes, "errors": self.errors[:20],
                "n_errors": len(self.errors), "admitted": self.admitted, "denied": self.denied}


def drive(url: str, prefix: str, duration_s: float, barrier: Any, out: Any,
          hold_s: float = 0.0) -> None:
    """Drive every primitive round-robin for ``duration_s`` after the barrier.

    With ``hold_s`` each pool call holds its lease that long (a worker that the
    test SIGKILLs while it holds leases).
    """
    client = redis.Redis.from_url(url, **FAST)
    kw: dict[str, Any] = dict(prefix=prefix)
    tb = TokenBucket(client, "tb", rate_per_s=300, burst=30, expected_processes=PROCESSES,
                     on_store_error=POLICIES["bucket"], **kw)
    shaper = TrafficShaper.with_global_limit(client, 300, 30,
                                             on_store_error=POLICIES["shaper"], **kw)
    cb = AdaptiveCircuitBreaker(client, "cb", error_rate_threshold=0.9, min_calls=10_000,
                                on_store_error=POLICIES["breaker"], **kw)
    budget = RetryBudget(client, "rb", deposit_batch=1, on_store_error=POLICIES["budget"],
                         **kw)
    lb = LoadBalancer(client, "pool", lease_ttl_s=1.0, refresh_s=0.2,
                      on_store_error=POLICIES["pool"], **kw)
    tracks = {
        "bucket": (Track("bucket", lambda: tb.store_stats), tb.try_acquire),
        "shaper": (Track("shaper", lambda: shaper.store_stats), lambda: shaper.try_acquire("c")),
        "breaker": (Track("breaker", lambda: cb.store_stats),
                    lambda: cb.record_result(True)),
        "budget": (Track("budget", lambda: budget.store_stats), budget.try_withdraw),
        "pool": (Track("pool", lambda: lb.store_stats),
                 lambda: lb.execute(lambda b: (time.sleep(hold_s), b.id)[1])),
    }
    no_backend_at: list[float] = []
    served_at = 0.0
    with contextlib.suppress(Exception):   # warm up: connect, load scripts
        tb.peek()
    barrier.wait()
    deadline = time.time() + duration_s
    while time.time() < deadline:
        for name, (track, fn) in tracks.items():
            if name == "pool":
                result = track.run(fn)
                if result is NO_BACKEND:
                    no_backend_at.append(time.time())
                elif result is not None:
                    served_at = time.time()
            else:
                track.run(fn)
    held = lb.get_statistics().connections if hold_s == 0 else -1
    out.put({"tracks": {n: t.report() for n, (t, _) in tracks.items()},
             "no_backend": len(no_backend_at), "last_no_backend": max(no_backend_at, default=0),
             "last_served": served_at, "connections_after": held,
             "pool_view": sorted(b.id for b in lb.backends()) if hold_s == 0 else []})
