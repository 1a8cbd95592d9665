"""Numeric ranges (issue #10 items 3, 4, 14; issue #12 item 6), against a real server.

The valid ranges are what the Lua scripts can represent (doubles, integer
microseconds, PEXPIRE's limit, round-trip number formatting); anything outside
raises ConfigError before the store is touched, and the scripts themselves
clamp TTLs so that they can never fail after a write.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import redis

from distlb import (
    AdaptiveCircuitBreaker,
    CircuitBreaker,
    ConfigError,
    LeakyBucket,
    Limit,
    PriorityLimiter,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
    TrafficShaper,
)
from distlb._scripts import script
from distlb._validate import MAX_REFILL_S, MIN_COST_FRACTION
from distlb.retry import DecorrelatedJitter, Exponential, ExponentialJitter, Fixed

pytestmark = pytest.mark.lua

TEN_YEARS_MS = MAX_REFILL_S * 1000


def own_keys(r: redis.Redis, prefix: str) -> list[bytes]:
    return list(r.scan_iter(match=f"{prefix}:*", count=1000))


def assert_all_expire(r: redis.Redis, prefix: str) -> None:
    """Every key of the prefix has a TTL (PTTL -1 = none)."""
    for k in own_keys(r, prefix):
        assert r.pttl(k) > 0, (k, r.pttl(k))


def raises_config(fn: Callable[[], Any], *fields: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn()
    assert info.value.field in fields, info.value
    return info.value


# -- item 4: ranges the scripts cannot represent are refused before the store ----------------


@pytest.mark.parametrize(("rate", "burst", "field"), [
    (1e-300, 1, "rate_per_s"),        # PEXPIRE out of range, after charging (issue #10)
    (1e-5, 1e12, "burst"),            # refill time 3e9 years
    (1e-12, 1, "rate_per_s"),
    (1, 1e-300, "burst"),
    (1e13, 1, "rate_per_s"),
])
def test_limits_out_of_range_are_refused_before_the_store(r: redis.Redis, prefix: str,
                                                          rate: float, burst: float,
                                                          field: str) -> None:
    shaper = TrafficShaper(r, "s", global_limit=Limit(10, 10), prefix=prefix)
    cases: list[Callable[[], Any]] = [
        lambda: TokenBucket(r, "tb", rate_per_s=rate, burst=burst, prefix=prefix),
        lambda: PriorityLimiter(r, "pq", rate_per_s=rate, burst=burst, prefix=prefix),
        lambda: TrafficShaper(r, "t2", client_limit=Limit(rate, burst), prefix=prefix),
        lambda: shaper.set_global_limit(rate, burst),
        lambda: shaper.set_client_rate_limit("alice", rate, burst),
        lambda: shaper.set_client_bandwidth_limit("alice", rate, burst),
        lambda: shaper.set_backend_bandwidth_limit("node1", rate, burst),
    ]
    for case in cases:
        err = raises_config(case, field)
        assert "[1e-09, 1e+12]" in str(err) or "10 years" in str(err), err
    raises_config(lambda: LeakyBucket(r, "lb", rate_per_s=rate, capacity=burst, prefix=prefix),
                  field.replace("burst", "capacity"))
    assert own_keys(r, prefix) == []


def test_leaky_bucket_queue_beyond_ten_years_is_refused(r: redis.Redis, prefix: str) -> None:
    # Was: next_us stored as -2**63 and the queue lost.
    err = raises_config(lambda: LeakyBucket(r, "lb", rate_per_s=1e-5, capacity=1e12,
                                            prefix=prefix), "capacity")
    assert "10 years" in str(err)
    assert own_keys(r, prefix) == []


def test_the_longest_refill_time_works_and_expires(r: redis.Redis, prefix: str) -> None:
    rate = 1e-3
    burst = MAX_REFILL_S * rate                      # exactly 10 years to refill
    tb = TokenBucket(r, "slow", rate_per_s=rate, burst=burst, prefix=prefix)
    assert tb.try_acquire(burst).allowed
    assert not tb.try_acquire(1).allowed
    pttl = r.pttl(tb.key)
    assert TEN_YEARS_MS * 0.99 < pttl <= TEN_YEARS_MS + 2000    # the longest refill + 2 s

    lb = LeakyBucket(r, "slow", rate_per_s=rate, capacity=burst, prefix=prefix)
    d = lb.try_acquire(burst)
    assert d.allowed
    assert lb.try_acquire(burst / 2).allowed is False
    next_us = float(r.hget(lb.key, "next_us") or b"nan")
    assert 0 < next_us < 2**53
    assert TEN_YEARS_MS * 0.99 < r.pttl(lb.key) <= TEN_YEARS_MS + 1000
    assert lb.peek(burst / 2).retry_after_s == pytest.approx(MAX_REFILL_S / 2, rel=1e-6)


def test_a_cost_too_small_to_charge_is_refused(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(r, "big", rate_per_s=1e3, burst=1e6, prefix=prefix)
    err = raises_config(lambda: tb.try_acquire(1e-9), "cost")
    assert "1e-06" in str(err) and "1e-12" in str(err)
    lb = LeakyBucket(r, "big", rate_per_s=1e3, capacity=1e6, prefix=prefix)
    raises_config(lambda: lb.try_acquire(1e-9), "cost")
    pq = PriorityLimiter(r, "big", rate_per_s=1e3, burst=1e6, prefix=prefix)
    raises_config(lambda: pq.try_acquire(0, cost=1e-9), "cost")
    shaper = TrafficShaper(r, "big", client_bandwidth=Limit(1e3, 1e6), prefix=prefix)
    raises_config(lambda: shaper.try_acquire("alice", bytes=1e-9), "bytes")
    assert own_keys(r, prefix) == []


def test_the_smallest_cost_is_charged(r: redis.Redis, prefix: str) -> None:
    # Was: a cost below burst x 1e-14 was never charged ("%.14g" storage); such costs are
    # now refused, and the smallest accepted one (burst x 1e-12) is charged every time.
    burst = 1e6
    cost = burst * MIN_COST_FRACTION                  # 1e-6
    rate = 0.01
    tb = TokenBucket(r, "big", rate_per_s=rate, burst=burst, prefix=prefix)
    prev_tokens, prev_ts = burst, None
    for _ in range(10):
        assert tb.try_acquire(cost).allowed
        tokens = float(r.hget(tb.key, "tokens") or b"nan")
        ts = int(r.hget(tb.key, "ts_us") or b"0")
        refilled = burst if prev_ts is None else min(burst,
                                                     prev_tokens + (ts - prev_ts) * rate / 1e6)
        assert tokens < burst                          # charged, not rounded away
        assert tokens == pytest.approx(refilled - cost, abs=cost * 1e-3)
        prev_tokens, prev_ts = tokens, ts


def test_sliding_windows_need_millisecond_buckets(r: redis.Redis, prefix: str) -> None:
    # Was: bucket numbers written as "1.7e+14", so nothing was ever counted.
    for make in (lambda: RetryBudget(r, "rb", window_s=0.0101, buckets=1000, prefix=prefix),
                 lambda: AdaptiveCircuitBreaker(r, "ab", window_s=0.0101, buckets=1000,
                                                prefix=prefix, subscribe=False)):
        err = raises_config(make, "buckets")
        assert "1 ms" in str(err)
    RetryBudget(r, "ok", window_s=1.0, buckets=1000, prefix=prefix)  # 1 ms buckets are fine
    assert own_keys(r, prefix) == []


def test_budget_window_is_not_rounded_up(r: redis.Redis, prefix: str) -> None:
    # min_retries_per_s x window_s: 100 x 0.0105 s = 1.05 retries, not 100 x 0.011 = 1.1.
    rb = RetryBudget(r, "rb", ratio=0, min_retries_per_s=100, window_s=0.0105, buckets=1,
                     prefix=prefix)
    assert rb.peek().balance == pytest.approx(1.05)


def test_budget_counts_in_the_smallest_buckets(r: redis.Redis, prefix: str) -> None:
    rb = RetryBudget(r, "rb", ratio=1, min_retries_per_s=0, window_s=60, buckets=1000,
                     deposit_batch=1, prefix=prefix)
    rb.deposit(5)
    d = rb.peek()
    assert d.deposits == 5
    fields = r.hgetall(rb.key)
    assert fields and all(k.split(b":")[0].isdigit() for k in fields), fields
    assert rb.try_withdraw().allowed
    assert_all_expire(r, prefix)


# -- item 4 / item 3: the scripts clamp TTLs and never fail after a write ---------------------


def _eval(r: redis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    s = script(name)
    return r.eval(s.source, len(keys), *keys, *args)


def test_bucket_script_survives_unrepresentable_input(r: redis.Redis, prefix: str) -> None:
    """Input no client sends (it is refused in Python) must still leave a key with a TTL:
    the script clamps the TTL instead of failing in PEXPIRE after HSET."""
    key = f"{prefix}:{{tb:raw}}"
    for rate, burst, cost in (("1e-300", "1", "1"), ("1e-5", "1e12", "1e12"),
                              ("1e-320", "1e300", "1e300")):
        r.delete(key)
        reply = _eval(r, "bucket", [key], ["take 0", f"{rate} {burst} {cost}"])
        assert reply.split()[0] == b"1"
        assert 0 < r.pttl(key) <= 1e12
        reply = _eval(r, "bucket", [key], ["take 0", f"{rate} {burst} {cost}"])  # readable
        assert reply.split()[:2] == [b"0", b"0"]        # and empty: the charge was kept


def test_leaky_script_survives_unrepresentable_input(r: redis.Redis, prefix: str) -> None:
    key = f"{prefix}:{{lk:raw}}"
    reply = _eval(r, "leaky", [key], ["take", "1e-12", "1e12", "2"])
    assert reply.split()[0] == b"1"
    next_us = float(r.hget(key, "next_us") or b"nan")
    assert next_us > 0 and math.isfinite(next_us)      # was -2**63: the queue was lost
    assert 0 < r.pttl(key) <= 1e12
    reply = _eval(r, "leaky", [key], ["take", "1e-12", "1e12", "1e12"])
    assert reply.split()[0] == b"0"                     # the queue is still there


def test_priority_script_survives_unrepresentable_input(r: redis.Redis, prefix: str) -> None:
    keys = [f"{prefix}:{{pq:raw}}", f"{prefix}:{{pq:raw}}:queue", f"{prefix}:{{pq:raw}}:leases",
            f"{prefix}:{{pq:raw}}:depth"]
    reply = _eval(r, "priority", keys, ["poll", "t1", "0", "1e-300", "1", "1", "10", "1", "100"])
    assert reply[1] == b"admitted"
    reply = _eval(r, "priority", keys, ["poll", "t2", "0", "1e-300", "1", "1", "10", "1", "100"])
    assert reply[1] == b"queued"
    assert_all_expire(r, prefix)


def test_budget_script_writes_integer_buckets(r: redis.Redis, prefix: str) -> None:
    """Sub-millisecond buckets (refused in Python) still count: bucket numbers are
    written with %d, never as "1.7e+14", and the key always gets its TTL."""
    key = f"{prefix}:{{rb:raw}}"
    # 0.01 ms buckets: bucket numbers ~1.8e14, a 200 s TTL.
    reply = _eval(r, "budget", [key], ["withdraw", "3", "1 0 100000 10000000"])
    assert reply.split()[:3] == [b"1", b"3", b"1"]
    fields = r.hgetall(key)
    assert fields and all(k.split(b":")[0].isdigit() for k in fields), fields
    assert r.pttl(key) > 0
    reply = _eval(r, "budget", [key], ["peek", "0", "1 0 100000 10000000"])
    assert reply.split()[1:3] == [b"3", b"1"]           # counted (was: never)
    _eval(r, "budget", [key], ["deposit", "1", "1 0 1e300 1"])   # a TTL beyond PEXPIRE: clamped
    assert 0 < r.pttl(key) <= 1e12


def test_breaker_script_writes_integer_buckets(r: redis.Redis, prefix: str) -> None:
    keys = [f"{prefix}:{{cb:raw}}", f"{prefix}:{{cb:raw}}:probes", f"{prefix}:{{cb:raw}}:window"]
    # 0.01 ms buckets: bucket numbers ~1.8e14.
    args = ["failure", "", "", "raw", "rate 0.5 100000 10000000 100 2 0.05",
            "1000 1 1 1000 60000", "0"]
    reply = _eval(r, "breaker", keys, args)
    assert reply.split()[9] == b"1"                     # the call was counted
    fields = r.hgetall(keys[2])
    assert fields and all(k.split(b":")[0].isdigit() for k in fields), fields
    assert r.pttl(keys[2]) > 0
    args[0] = "success"
    assert _eval(r, "breaker", keys, args).split()[9] == b"2"   # both counted (was: never)


# -- issue #12 item 6: round-trip exact settings, never rewritten on every call ---------------


def test_rate_stored_exactly_and_no_false_conflict(r: redis.Redis, prefix: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="distlb")
    rate = 100 / 3
    tb = TokenBucket(r, "third", rate_per_s=rate, burst=10 / 3, prefix=prefix)
    for _ in range(3):
        tb.try_acquire(1 / 3)
    assert float(r.hget(tb.key, "rate") or b"nan") == rate
    assert float(r.hget(tb.key, "burst") or b"nan") == 10 / 3
    assert "different rate" not in caplog.text
    lb = LeakyBucket(r, "third", rate_per_s=rate, capacity=10 / 3, prefix=prefix)
    for _ in range(3):
        lb.try_acquire(1 / 3)
    assert float(r.hget(lb.key, "rate") or b"nan") == rate
    assert "different rate" not in caplog.text
    # A conflict is still seen: another process with another rate.
    TokenBucket(r, "third", rate_per_s=rate * (1 + 1e-15), burst=10 / 3,
                prefix=prefix).try_acquire()
    assert "different rate" in caplog.text


def test_settings_are_not_rewritten_on_every_call(r: redis.Redis, prefix: str) -> None:
    """A stored setting equal in value but spelled differently survives later calls:
    only a changed setting is written (each rewrite is wasted work on the hot path)."""
    tb = TokenBucket(r, "t", rate_per_s=20, burst=5, prefix=prefix)
    lb = LeakyBucket(r, "l", rate_per_s=20, capacity=5, prefix=prefix)
    pq = PriorityLimiter(r, "p", rate_per_s=20, burst=5, prefix=prefix)
    shaper = TrafficShaper(r, "s", global_limit=Limit(20, 5), client_limit=Limit(20, 5),
                           prefix=prefix)
    shaper.set_client_rate_limit("alice", 40, 8)
    tb.try_acquire()
    lb.try_acquire()
    pq.try_acquire(0)
    shaper.try_acquire("alice")
    keyed = [(tb.key, "burst", b"5.0"), (lb.key, "capacity", b"5.0"), (pq.key, "burst", b"5.0"),
             (f"{shaper.key}:global", "burst", b"5.0"), (f"{shaper.key}:c:alice", "burst",
                                                         b"8.0")]
    for key, field, spelled in keyed:
        r.hset(key, field, spelled)
    tb.try_acquire()
    lb.try_acquire()
    pq.try_acquire(0)
    shaper.try_acquire("alice")
    for key, field, spelled in keyed:
        assert r.hget(key, field) == spelled, key


# -- item 14: only documented errors, whatever the input --------------------------------------

HUGE = (10**400, 10**5000)        # beyond a double; the second beyond int -> str conversion


def _numeric_constructors(r: redis.Redis, prefix: str) -> dict[str, Callable[[Any], Any]]:
    def tb(**kw: Any) -> Any:
        return TokenBucket(r, "x", **{"rate_per_s": 1, "burst": 1, "prefix": prefix, **kw})

    def lb(**kw: Any) -> Any:
        return LeakyBucket(r, "x", **{"rate_per_s": 1, "capacity": 1, "prefix": prefix, **kw})

    def pq(**kw: Any) -> Any:
        return PriorityLimiter(r, "x", **{"rate_per_s": 1, "burst": 1, "prefix": prefix, **kw})

    def cb(**kw: Any) -> Any:
        return CircuitBreaker(r, "x", prefix=prefix, subscribe=False, **kw)

    def ab(**kw: Any) -> Any:
        return AdaptiveCircuitBreaker(r, "x", prefix=prefix, subscribe=False, **kw)

    def rb(**kw: Any) -> Any:
        return RetryBudget(r, "x", prefix=prefix, **kw)

    out: dict[str, Callable[[Any], Any]] = {}
    for field in ("rate_per_s", "burst", "expected_processes", "retry_store_after_s"):
        out[f"TokenBucket.{field}"] = lambda v, f=field: tb(**{f: v})
    for field in ("rate_per_s", "capacity", "expected_processes"):
        out[f"LeakyBucket.{field}"] = lambda v, f=field: lb(**{f: v})
    for field in ("rate_per_s", "burst", "levels", "max_queue_depth", "aging_s", "lease_s"):
        out[f"PriorityLimiter.{field}"] = lambda v, f=field: pq(**{f: v})
    for field in ("failure_threshold", "open_timeout_s", "success_threshold",
                  "half_open_max_requests", "probe_lease_s", "slow_call_s", "max_staleness_s",
                  "ttl_s"):
        out[f"CircuitBreaker.{field}"] = lambda v, f=field: cb(**{f: v})
    for field in ("error_rate_threshold", "window_s", "buckets", "min_calls", "baseline_factor",
                  "baseline_alpha", "throttle_k"):
        out[f"AdaptiveCircuitBreaker.{field}"] = lambda v, f=field: ab(**{f: v})
    for field in ("ratio", "min_retries_per_s", "window_s", "buckets", "deposit_batch",
                  "deposit_flush_s", "expected_processes"):
        out[f"RetryBudget.{field}"] = lambda v, f=field: rb(**{f: v})
    out["TrafficShaper.config_ttl_s"] = lambda v: TrafficShaper(r, "x", config_ttl_s=v,
                                                                 prefix=prefix)
    out["Limit.rate_per_s"] = lambda v: Limit(v, 1)
    out["Limit.burst"] = lambda v: Limit(1, v)
    out["Fixed.delay_s"] = Fixed
    out["Exponential.base_s"] = Exponential
    out["Exponential.multiplier"] = lambda v: Exponential(0.1, v)
    out["Exponential.max_delay_s"] = lambda v: Exponential(0.1, 2, v)
    out["ExponentialJitter.max_delay_s"] = lambda v: ExponentialJitter(0.1, v)
    out["DecorrelatedJitter.base_s"] = DecorrelatedJitter
    out["RetryPolicy.max_attempts"] = lambda v: RetryPolicy(max_attempts=v)
    out["RetryPolicy.max_total_s"] = lambda v: RetryPolicy(max_total_s=v)
    return out


def test_huge_numbers_raise_config_error_on_every_numeric_field(r: redis.Redis,
                                                                prefix: str) -> None:
    # Was: OverflowError (float(10**400)) or ValueError (printing a 5000-digit int).
    for label, make in _numeric_constructors(r, prefix).items():
        for value in (*HUGE, -HUGE[0], math.nan, math.inf, [1], "1", None):
            if value is None and label.endswith(("slow_call_s", "throttle_k", "max_total_s")):
                continue  # None is documented there: "off"
            with pytest.raises(ConfigError):
                make(value)
                pytest.fail(f"{label}={type(value).__name__} accepted")
    assert own_keys(r, prefix) == []


def test_calls_with_wrong_types_raise_config_error(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(r, "x", rate_per_s=1, burst=1, prefix=prefix)
    lb = LeakyBucket(r, "x", rate_per_s=1, capacity=1, prefix=prefix)
    pq = PriorityLimiter(r, "x", rate_per_s=1, burst=1, prefix=prefix)
    shaper = TrafficShaper(r, "x", global_limit=Limit(1, 1), prefix=prefix)
    rb = RetryBudget(r, "x", prefix=prefix)
    calls: list[Callable[[Any], Any]] = [
        tb.try_acquire, tb.peek, lambda v: tb.acquire(v, timeout_s=0),
        lambda v: tb.acquire(1, timeout_s=v), lb.try_acquire, lb.peek, pq.try_acquire,
        lambda v: pq.try_acquire(0, cost=v), lambda v: shaper.try_acquire(cost=v),
        lambda v: shaper.peek(bytes=v), lambda v: shaper.set_global_limit(v, 1), rb.deposit,
    ]
    for bad in ([1], {1: 2}, {1}, 10**400, 10**5000, math.nan, "1", None, b"1"):
        for call in calls:
            with pytest.raises(ConfigError):
                call(bad)
    assert own_keys(r, prefix) == []
