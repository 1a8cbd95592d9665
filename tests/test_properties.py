"""Bad input, fuzzed over the public API: only documented errors, and shared state stays intact.

The numeric part drives every constructor and call of the limiters, breakers and
retries with numbers of every magnitude (and junk): each either works or raises
a documented error, and afterwards every key of the test's prefix has a TTL and
holds values the scripts can read (the next normal call still works).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distlb import (
    AdaptiveCircuitBreaker,
    CircuitBreaker,
    ConfigError,
    LeakyBucket,
    Limit,
    PriorityLimiter,
    RateLimited,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
    TrafficShaper,
)
from distlb._keys import parse
from distlb.retry import DecorrelatedJitter, Exponential, ExponentialJitter, Fixed

pytestmark = pytest.mark.lua

anything = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=300), st.binary(max_size=8),
)
names = st.one_of(st.text(max_size=300), anything)
SETTINGS = settings(max_examples=75, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def own_keys_intact(r: redis.Redis, prefix: str, before: dict[bytes, Any]) -> None:
    for k in r.scan_iter(match=f"{prefix}:*"):
        ref = parse(k)
        assert ref is not None and ref.prefix == prefix, k  # every key is well formed
    assert r.hgetall(f"{prefix}:{{tb:victim}}") == before


@pytest.fixture
def victim(r: redis.Redis, prefix: str) -> dict[bytes, Any]:
    TokenBucket(r, "victim", rate_per_s=0.001, burst=10, prefix=prefix).try_acquire(3)
    return r.hgetall(f"{prefix}:{{tb:victim}}")  # type: ignore[no-any-return]


@SETTINGS
@given(name=names, rate=anything, burst=anything, cost=anything)
def test_token_bucket_fuzz(r: redis.Redis, prefix: str, victim: dict[bytes, Any], name: Any,
                           rate: Any, burst: Any, cost: Any) -> None:
    try:
        tb = TokenBucket(r, name, rate_per_s=rate, burst=burst, prefix=prefix)
        tb.try_acquire(cost)
        tb.peek(cost)
    except ConfigError:
        pass
    own_keys_intact(r, prefix, victim)


@SETTINGS
@given(client_id=names, cost=anything, nbytes=anything, backend=names, rate=anything,
       burst=anything)
def test_shaper_fuzz(r: redis.Redis, prefix: str, victim: dict[bytes, Any], client_id: Any,
                     cost: Any, nbytes: Any, backend: Any, rate: Any, burst: Any) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(1000, 1000), client_limit=Limit(10, 10),
                           client_bandwidth=Limit(1e6, 1e6), prefix=prefix)
    for action in (
        lambda: shaper.try_acquire(client_id, cost=cost, bytes=nbytes, backend=backend),
        lambda: shaper.set_client_rate_limit(client_id, rate, burst),
        lambda: shaper.set_backend_bandwidth_limit(backend, rate, burst),
        lambda: shaper.peek(client_id, cost=cost),
    ):
        with contextlib.suppress(ConfigError):
            action()
    own_keys_intact(r, prefix, victim)
    shaper.limits()  # every stored override still parses


@SETTINGS
@given(priority=anything, cost=anything, capacity=anything, depth=anything)
def test_leaky_and_priority_fuzz(r: redis.Redis, prefix: str, victim: dict[bytes, Any],
                                 priority: Any, cost: Any, capacity: Any, depth: Any) -> None:
    for action in (
        lambda: LeakyBucket(r, "l", rate_per_s=10, capacity=capacity, prefix=prefix)
        .try_acquire(cost),
        lambda: PriorityLimiter(r, "p", rate_per_s=10, burst=10, levels=3,
                                max_queue_depth=depth, prefix=prefix).try_acquire(priority,
                                                                                  cost=cost),
    ):
        with contextlib.suppress(ConfigError):
            action()
    own_keys_intact(r, prefix, victim)


@SETTINGS
@given(name=names, threshold=anything, timeout=anything, probes=anything, k=anything)
def test_breaker_and_budget_fuzz(r: redis.Redis, prefix: str, victim: dict[bytes, Any],
                                 name: Any, threshold: Any, timeout: Any, probes: Any,
                                 k: Any) -> None:
    from distlb import AdaptiveCircuitBreaker, CircuitBreaker, RetryBudget
    for action in (
        lambda: CircuitBreaker(r, name, failure_threshold=threshold, open_timeout_s=timeout,
                               half_open_max_requests=probes, prefix=prefix,
                               subscribe=False).record_failure(),
        lambda: AdaptiveCircuitBreaker(r, "a", error_rate_threshold=timeout, throttle_k=k,
                                       min_calls=threshold, prefix=prefix,
                                       subscribe=False).record_result(False),
        lambda: RetryBudget(r, name, ratio=timeout, window_s=k, deposit_batch=probes,
                            prefix=prefix).try_withdraw(),
    ):
        with contextlib.suppress(ConfigError):
            action()
    own_keys_intact(r, prefix, victim)


@SETTINGS
@given(backend_id=names, address=names, weight=anything, healthy=anything)
def test_balancer_registry_fuzz(r: redis.Redis, prefix: str, victim: dict[bytes, Any],
                                backend_id: Any, address: Any, weight: Any,
                                healthy: Any) -> None:
    from distlb import Backend, LoadBalancer, UnknownBackend
    lb = LoadBalancer(r, "api", prefix=prefix, subscribe=False)
    for action in (
        lambda: lb.add_backend(Backend(backend_id, address, weight=weight)),
        lambda: lb.update_backend_health(backend_id, healthy),
        lambda: lb.update_backend_weight(backend_id, weight),
        lambda: lb.remove_backend(backend_id),
    ):
        # Documented outcomes only: bad input, or an id the pool does not have.
        with contextlib.suppress(ConfigError, UnknownBackend):
            action()
    own_keys_intact(r, prefix, victim)
    lb.backends()                      # whatever was stored still reads back


# -- numbers of every magnitude, against the real server ---------------------------------------

#: Numbers across the whole double range (log-uniform), the edges of the valid
#: ranges, and what is not a valid number at all.
plausible = st.builds(lambda m, e: m * 10.0 ** e, st.floats(1, 9.99), st.integers(-10, 12))
magnitudes = st.one_of(
    plausible, plausible, plausible, st.integers(1, 2000),
    st.builds(lambda m, e: m * 10.0 ** e, st.floats(1, 9.99), st.integers(-320, 308)),
    st.sampled_from([0, 1, 1e-9, 1e12, 1e-9 * (1 - 1e-16), 1e12 * (1 + 1e-15), 3.1536e8,
                     2**53, 2**63, 10**400, -1, 0.0101, 1000]),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, "1", [1], b"1"]),
)
SMALL = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMERIC_KEY_FIELDS = {b"tokens", b"ts_us", b"rate", b"burst", b"next_us", b"capacity"}
NO_SLEEP = {"sleep": lambda _s: None}


def state_readable(r: redis.Redis, prefix: str) -> None:
    """No key of the prefix lacks a TTL, and every number in it is one the scripts read."""
    for k in r.scan_iter(match=f"{prefix}:*", count=1000):
        assert r.pttl(k) != -1, k                       # -2: expired meanwhile, fine
        if r.type(k) != b"hash":
            continue
        for field, value in r.hgetall(k).items():
            if field in NUMERIC_KEY_FIELDS:
                assert math.isfinite(float(value)), (k, field, value)
            elif b"{rb:" in k or k.endswith(b":window"):  # sliding-window buckets
                bucket, _, kind = field.partition(b":")
                assert bucket.isdigit() and kind in (b"d", b"w", b"c", b"e", b"t"), (k, field)
                int(value)


def attempt(*calls: Any) -> None:
    """Run each call; bad input (ConfigError) and limit outcomes that raise are documented."""
    for call in calls:
        with contextlib.suppress(ConfigError, RateLimited):
            call()


@SMALL
@given(rate=magnitudes, burst=magnitudes, cost=magnitudes)
def test_token_bucket_numbers(r: redis.Redis, prefix: str, victim: dict[bytes, Any],
                              rate: Any, burst: Any, cost: Any) -> None:
    try:
        tb = TokenBucket(r, "n", rate_per_s=rate, burst=burst, prefix=prefix, **NO_SLEEP)
    except ConfigError:
        tb = None
    if tb is not None:
        attempt(lambda: tb.try_acquire(cost), lambda: tb.peek(cost),
                lambda: tb.acquire(cost, timeout_s=0))
        state_readable(r, prefix)
        d = tb.peek(tb.limit.burst)                     # the next normal call works
        assert d.source == "store" and math.isfinite(d.remaining)
    own_keys_intact(r, prefix, victim)


@SMALL
@given(rate=magnitudes, capacity=magnitudes, cost=magnitudes)
def test_leaky_bucket_numbers(r: redis.Redis, prefix: str, victim: dict[bytes, Any],
                              rate: Any, capacity: Any, cost: Any) -> None:
    try:
        lb = LeakyBucket(r, "n", rate_per_s=rate, capacity=capacity, prefix=prefix, **NO_SLEEP)
    except ConfigError:
        lb = None
    if lb is not None:
        attempt(lambda: lb.try_acquire(cost), lambda: lb.peek(cost),
                lambda: lb.acquire(cost, timeout_s=0))
        state_readable(r, prefix)
        d = lb.peek(lb.capacity)
        assert d.source == "store" and math.isfinite(d.queued) and d.queued >= 0
    own_keys_intact(r, prefix, victim)


@SMALL
@given(rate=magnitudes, burst=magnitudes, cost=magnitudes, nbytes=magnitudes,
       ttl=magnitudes)
def test_shaper_numbers(r: redis.Redis, prefix: str, victim: dict[bytes, Any], rate: Any,
                        burst: Any, cost: Any, nbytes: Any, ttl: Any) -> None:
    shaper = TrafficShaper(r, "n", global_limit=Limit(1e6, 1e6), client_limit=Limit(10, 10),
                           client_bandwidth=Limit(1e6, 1e6), backend_bandwidth=Limit(1e9, 1e9),
                           prefix=prefix, **NO_SLEEP)
    attempt(lambda: TrafficShaper(r, "n2", config_ttl_s=ttl, prefix=prefix),
            lambda: TrafficShaper(r, "n3", global_limit=Limit(rate, burst), prefix=prefix),
            lambda: shaper.set_global_limit(rate, burst),
            lambda: shaper.set_client_rate_limit("alice", rate, burst),
            lambda: shaper.set_client_bandwidth_limit("alice", rate, burst),
            lambda: shaper.set_backend_bandwidth_limit("node1", rate, burst),
            lambda: shaper.try_acquire("alice", cost=cost, bytes=nbytes, backend="node1"),
            lambda: shaper.peek("alice", cost=cost, bytes=nbytes, backend="node1"),
            lambda: shaper.acquire("bob", cost=cost, bytes=nbytes, timeout_s=0))
    state_readable(r, prefix)
    shaper.limits()                                     # every override reads back
    d = shaper.peek("alice", cost=1e-3, bytes=1, backend="node1")
    assert d.source == "store"
    own_keys_intact(r, prefix, victim)


@SMALL
@given(rate=magnitudes, burst=magnitudes, cost=magnitudes, aging=magnitudes, lease=magnitudes,
       level=magnitudes)
def test_priority_numbers(r: redis.Redis, prefix: str, victim: dict[bytes, Any], rate: Any,
                          burst: Any, cost: Any, aging: Any, lease: Any, level: Any) -> None:
    try:
        pq = PriorityLimiter(r, "n", rate_per_s=rate, burst=burst, levels=3, aging_s=aging,
                             lease_s=lease, prefix=prefix, **NO_SLEEP)
    except ConfigError:
        pq = None
    if pq is not None:
        attempt(lambda: pq.try_acquire(level, cost=cost), lambda: pq.try_acquire(0, cost=cost),
                lambda: pq.acquire(level, cost=cost, timeout_s=0),
                lambda: pq.acquire(2, cost=pq.limit.burst, timeout_s=0))
        state_readable(r, prefix)
        assert pq.try_acquire(1, cost=pq.limit.burst).status in ("admitted", "busy")
        assert r.zcard(f"{pq.key}:queue") == 0          # every waiter left the queue
    own_keys_intact(r, prefix, victim)


@SMALL
@given(ratio=magnitudes, minimum=magnitudes, window=magnitudes, buckets=magnitudes,
       batch=magnitudes, n=magnitudes)
def test_budget_numbers(r: redis.Redis, prefix: str, victim: dict[bytes, Any], ratio: Any,
                        minimum: Any, window: Any, buckets: Any, batch: Any, n: Any) -> None:
    try:
        rb = RetryBudget(r, "n", ratio=ratio, min_retries_per_s=minimum, window_s=window,
                         buckets=buckets, deposit_batch=batch, prefix=prefix)
    except ConfigError:
        rb = None
    if rb is not None:
        attempt(lambda: rb.deposit(n), rb.flush, rb.try_withdraw)
        state_readable(r, prefix)
        rb.deposit(1)
        d = rb.flush()
        assert d.source == "store" and d.deposits >= 1   # deposits are counted
    own_keys_intact(r, prefix, victim)


@SMALL
@given(a=magnitudes, b=magnitudes, c=magnitudes, attempts=magnitudes, total=magnitudes)
def test_retry_policy_numbers(a: Any, b: Any, c: Any, attempts: Any, total: Any) -> None:
    makers = (lambda: Fixed(a), lambda: Exponential(a, b, c), lambda: ExponentialJitter(a, c),
              lambda: DecorrelatedJitter(a, c))
    for make in makers:
        try:
            backoff = make()
            policy = RetryPolicy(backoff=backoff, max_attempts=attempts, max_total_s=total)
        except ConfigError:
            continue
        delays = policy.delays()
        assert all(math.isfinite(x) and 0 <= x <= 86400 for x in delays), delays
        calls: list[int] = []

        def failing(calls: list[int] = calls) -> None:
            calls.append(1)
            raise KeyError("backend down")

        with contextlib.suppress(KeyError):
            policy.with_sleep(lambda _s: None).execute(failing)
        assert 1 <= len(calls) <= policy.max_attempts


@SMALL
@given(threshold=magnitudes, timeout=magnitudes, lease=magnitudes, ttl=magnitudes,
       rate=magnitudes, window=magnitudes, buckets=magnitudes, alpha=magnitudes)
def test_breaker_numbers(r: redis.Redis, prefix: str, victim: dict[bytes, Any], threshold: Any,
                         timeout: Any, lease: Any, ttl: Any, rate: Any, window: Any,
                         buckets: Any, alpha: Any) -> None:
    made = []
    for make in (
        lambda: CircuitBreaker(r, "c", failure_threshold=threshold, open_timeout_s=timeout,
                               probe_lease_s=lease, ttl_s=ttl, prefix=prefix, subscribe=False),
        lambda: AdaptiveCircuitBreaker(r, "a", error_rate_threshold=rate, window_s=window,
                                       buckets=buckets, baseline_alpha=alpha, min_calls=1,
                                       open_timeout_s=timeout, prefix=prefix, subscribe=False),
    ):
        with contextlib.suppress(ConfigError):
            made.append(make())
    for cb in made:
        cb.record_failure()
        cb.record_success()
        st_ = cb.state()
        assert st_.source == "store" and st_.state in ("closed", "open", "half_open")
    state_readable(r, prefix)
    for cb in made:
        cb.reset()
    own_keys_intact(r, prefix, victim)
