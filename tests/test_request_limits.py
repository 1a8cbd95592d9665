"""A limit on requests must be able to admit one request: its burst is at least 1.

``Limit(10, 0.5)`` is a valid token bucket (fractional units), but as a limit on
requests, each costing 1, it could never admit one: the pool denied every call with
"retry after inf s", the shaper refused every default call. Every place that limits
requests now refuses it up front (``Limit.check_request_limit``), naming the field,
``burst`` and the range, before anything reaches the store. A ``TokenBucket`` keeps
fractional bursts legal (its unit is the caller's) and says at the call what to do.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from distlb import ConfigError, Limit, LoadBalancer, TokenBucket, TrafficShaper


def prefix_keys(r: redis.Redis, prefix: str) -> list[Any]:
    return list(r.scan_iter(match=f"{prefix}:*", count=1000))


@pytest.mark.parametrize("limit", [Limit(10, 0.5), Limit(10, 0.999999), Limit(1e6, 1e-9),
                                   Limit.parse("10/s burst 0.5")])
def test_a_request_limit_below_one_request_is_refused(limit: Limit) -> None:
    with pytest.raises(ConfigError) as err:
        limit.check_request_limit("rate_limit")
    assert err.value.field == "rate_limit"
    assert "burst must be in [1, 1e+12]" in str(err.value)
    assert f"got {limit.burst:g}" in str(err.value)


@pytest.mark.parametrize("limit", [Limit(10, 1), Limit(0.5, 1), Limit(1e12, 1e12)])
def test_a_request_limit_of_one_request_or_more_is_itself(limit: Limit) -> None:
    assert limit.check_request_limit("client_limit") is limit


@pytest.mark.parametrize("field", ["global_limit", "client_limit"])
def test_the_shaper_refuses_a_request_limit_below_one(r: redis.Redis, prefix: str,
                                                      field: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrafficShaper(r, "s", prefix=prefix, **{field: Limit(10, 0.5)})
    assert err.value.field == field and "burst" in str(err.value)
    # Bandwidth limits count bytes, not requests: a fractional burst stays legal there.
    TrafficShaper(r, "s", prefix=prefix, client_bandwidth=Limit(10, 0.5))
    assert prefix_keys(r, prefix) == []


def test_the_shaper_overrides_refuse_a_request_limit_below_one(r: redis.Redis,
                                                               prefix: str) -> None:
    shaper = TrafficShaper(r, "s", prefix=prefix, global_limit=Limit(10, 10))
    for set_limit in (lambda: shaper.set_global_limit(10, 0.5),
                      lambda: shaper.set_client_rate_limit("alice", 10, 0.5)):
        with pytest.raises(ConfigError) as err:
            set_limit()
        assert err.value.field == "burst" and "[1, 1e+12]" in str(err.value)
    assert shaper.limits() == {}                       # nothing reached the store
    assert shaper.set_client_bandwidth_limit("alice", 10, 0.5)   # bytes: legal
    assert shaper.try_acquire("alice").allowed
    shaper.reset()
    shaper.reset_client("alice")
    r.delete(shaper.limits_key)


def test_a_slow_request_limit_is_a_small_rate_with_a_burst_of_one(r: redis.Redis,
                                                                 prefix: str) -> None:
    """The legal way to say "one request every 2 s": it admits one, then denies."""
    shaper = TrafficShaper(r, "s", prefix=prefix, global_limit=Limit(0.5, 1))
    first, second = shaper.try_acquire(), shaper.try_acquire()
    assert first.allowed and not second.allowed
    assert 0 < second.retry_after_s <= 2.0
    shaper.reset()


def test_a_token_bucket_keeps_fractional_bursts_for_fractional_costs(r: redis.Redis,
                                                                     prefix: str) -> None:
    tb = TokenBucket(r, "frac", rate_per_s=10, burst=0.5, prefix=prefix)
    with pytest.raises(ConfigError) as err:
        tb.try_acquire()                                  # the default cost 1 cannot fit
    assert err.value.field == "cost"
    assert "at most burst (0.5), got 1" in str(err.value) and "pass cost=" in str(err.value)
    assert prefix_keys(r, prefix) == []                  # refused before the store
    assert tb.try_acquire(0.25).allowed and tb.try_acquire(0.25).allowed
    assert not tb.try_acquire(0.25).allowed
    tb.reset()


@pytest.mark.parametrize("field", ["rate_limit", "client_limit"])
def test_the_pool_refuses_a_request_limit_below_one(r: redis.Redis, prefix: str,
                                                    field: str) -> None:
    try:
        lb = LoadBalancer(r, "pool", prefix=prefix, subscribe=False,
                          **{field: Limit(10, 0.5)})
    except ConfigError as exc:
        assert exc.field == field and "burst" in str(exc)
        return
    lb.close()
    raise AssertionError(f"LoadBalancer accepted {field}=Limit(10, 0.5)")


def test_the_pool_config_refuses_a_request_limit_below_one(r: redis.Redis,
                                                           prefix: str) -> None:
    lb = LoadBalancer(r, "pool", prefix=prefix, subscribe=False)
    try:
        lb.set_config(rate_limit="10/s burst 0.5")
    except ConfigError as exc:
        assert exc.field == "rate_limit" and "burst" in str(exc)
        return
    finally:
        for k in prefix_keys(r, prefix):                  # a stored config, if any
            r.delete(k)
        lb.close()
    raise AssertionError("set_config accepted rate_limit='10/s burst 0.5'")
