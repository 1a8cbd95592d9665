"""Bad input, fuzzed over the public API: only ConfigError, and shared state stays intact."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distlb import ConfigError, LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper
from distlb._keys import parse

pytestmark = pytest.mark.lua

anything = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=300), st.binary(max_size=8),
)
names = st.one_of(st.text(max_size=300), anything)
SETTINGS = settings(max_examples=150, deadline=None,
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
