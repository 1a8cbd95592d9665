"""A fleet worker for the cluster failover and resharding tests: drives every shared
primitive, placed on chosen shards, through a Redis Cluster or a Sentinel-managed
primary, and writes down where each decision came from.

Runs in a real child process (multiprocessing, spawn). ``placement`` names each
tracked entity, e.g. ``{"bucket@victim": "tb-17", "bucket@other": "tb-3", ...}``: the
parent picks the names so that each entity's slot lands on the shard it wants. Per
track: calls answered by the store / by the failure policy / by a local cache, every
exception that reached the caller, the source changes over time (wall clock), and
how many calls the store admitted (for "no double grants").
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from distlb import (
    AdaptiveCircuitBreaker,
    BreakerSettings,
    LeakyBucket,
    LoadBalancer,
    RetryBudget,
    TokenBucket,
    TrafficShaper,
)
from tests.fault_workers import NO_BACKEND, Track

#: The README's client settings for limiters: short timeouts, no client-side retries.
FAST: dict[str, Any] = dict(socket_timeout=0.3, socket_connect_timeout=0.3,
                            retry=Retry(NoBackoff(), 0))

#: The failure policy of each primitive: every policy is exercised in one run.
POLICIES = {"bucket": "local", "leaky": "fail_open", "shaper": "fail_closed",
            "breaker": "fail_open", "budget": "fail_open", "pool": "fail_open"}
#: Token bucket: rate and burst (the "no double grants" check uses them).
BUCKET_RATE, BUCKET_BURST = 200.0, 20.0
PROCESSES = 3


def make_client(target: dict[str, Any]) -> Any:
    """A client of the cluster (``{"cluster": [(host, port), ...]}``) or of a Sentinel
    master (``{"sentinels": [(host, port), ...], "service": "main"}``)."""
    if "cluster" in target:
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target["cluster"]]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **FAST)
    sentinel = redis.sentinel.Sentinel(target["sentinels"], socket_timeout=0.3,
                                       socket_connect_timeout=0.3)
    return sentinel.master_for(target["service"], **FAST)


def build(client: Any, prefix: str, kind: str, name: str) -> tuple[Any, Any]:
    """The object and the call of one tracked primitive."""
    kw: dict[str, Any] = dict(prefix=prefix, on_store_error=POLICIES[kind])
    if kind == "bucket":
        tb = TokenBucket(client, name, rate_per_s=BUCKET_RATE, burst=BUCKET_BURST,
                         expected_processes=PROCESSES, **kw)
        return tb, tb.try_acquire
    if kind == "leaky":
        lk = LeakyBucket(client, name, rate_per_s=500, capacity=50, **kw)
        return lk, lk.try_acquire
    if kind == "shaper":
        sh = TrafficShaper.with_global_limit(client, 300, 30, name=name, **kw)
        return sh, lambda: sh.try_acquire("c")
    if kind == "breaker":
        cb = AdaptiveCircuitBreaker(client, name, error_rate_threshold=0.9, min_calls=10_000,
                                    **kw)
        return cb, lambda: cb.record_result(True)
    if kind == "budget":
        rb = RetryBudget(client, name, deposit_batch=1, **kw)
        return rb, rb.try_withdraw
    if kind == "pool":
        lb = LoadBalancer(client, name, lease_ttl_s=2.0, refresh_s=0.2,
                          breaker=BreakerSettings(failure_threshold=1000), **kw)
        return lb, lambda: lb.execute(lambda b: b.id)
    raise ValueError(kind)


def drive(target: dict[str, Any], prefix: str, placement: dict[str, str], duration_s: float,
          barrier: Any, out: Any) -> None:
    """Drive every tracked primitive round-robin for ``duration_s`` after the barrier."""
    client = make_client(target)
    tracks: dict[str, tuple[Track, Any]] = {}
    objects: dict[str, Any] = {}
    for track, name in placement.items():
        kind = track.split("@")[0]
        obj, fn = build(client, prefix, kind, name)
        objects[track] = obj
        # A pool's own guard only: its per-backend breakers are entities of their own
        # (on their own slots), counted apart in "breaker_fallbacks".
        tracks[track] = (Track(track, lambda o=obj: o.store_stats), fn)
    for obj in objects.values():       # warm up: connect, load scripts, first snapshot
        with contextlib.suppress(Exception):
            if isinstance(obj, LoadBalancer):
                obj.execute(lambda b: b.id)
            elif isinstance(obj, TrafficShaper):
                obj.try_acquire("c")
    barrier.wait()
    started = time.time()
    deadline = started + duration_s
    no_backend = 0
    slowest = dict.fromkeys(tracks, 0.0)    # the longest one call kept its caller waiting
    while time.time() < deadline:
        for name, (track, fn) in tracks.items():
            t0 = time.perf_counter()
            if track.run(fn) is NO_BACKEND:
                no_backend += 1
            slowest[name] = max(slowest[name], time.perf_counter() - t0)
    ended = time.time()
    conns = {t: objects[t].get_statistics().connections for t in objects
             if t.startswith("pool")}
    breaker_falls = {t: sum(cb.store_stats.fallbacks for cb in objects[t]._pool_breakers.all())
                     for t in objects if t.startswith("pool")}
    out.put({"breaker_fallbacks": breaker_falls, "slowest_call_s": slowest,
             "tracks": {n: t.report() for n, (t, _) in tracks.items()},
             "started": started, "ended": ended, "no_backend": no_backend,
             "connections_after": conns})
    for obj in objects.values():
        with contextlib.suppress(Exception):
            obj.close()
    client.close()
