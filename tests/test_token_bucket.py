"""TokenBucket on a real server, in every client reply mode."""

from __future__ import annotations

import logging
import math
import time

import pytest
import redis

from distlb import ConfigError, RateLimited, TokenBucket

pytestmark = pytest.mark.lua


def test_burst_then_deny_with_accurate_retry_after(client: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(client, "api", rate_per_s=10, burst=5, prefix=prefix)
    t0 = time.monotonic()
    decisions = [tb.try_acquire() for _ in range(6)]
    elapsed = time.monotonic() - t0          # long on a busy machine: the bucket refills
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    denied = decisions[-1]
    assert denied.limit == "api" and denied.denied_by == ("api",)
    # One token takes 100 ms at 10/s, less what refilled while the six calls ran.
    assert 0.1 - elapsed - 0.001 < denied.retry_after_s <= 0.1
    assert 0.5 - elapsed - 0.001 < denied.reset_after_s <= 0.5
    # What refilled while the calls ran, at 10/s (fakeredis or a loaded machine is slow).
    assert denied.remaining <= 10 * elapsed + 1e-3
    assert "denied by api (10/s, burst 5" in denied.explanation


def test_refills_at_rate_on_server_clock(client: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(client, "api", rate_per_s=50, burst=5, prefix=prefix)
    for _ in range(4):
        assert tb.try_acquire()
    before_last = time.monotonic()
    assert tb.try_acquire()                   # empty (or nearly) on the server's clock
    after_last = time.monotonic()
    time.sleep(0.1)                           # about 5 tokens at 50/s
    first_refill = time.monotonic()
    got = sum(tb.try_acquire().allowed for _ in range(8))
    end = time.monotonic()
    # The server refilled at 50/s between the last take and each refill call: bounded by
    # what this process measured around those calls, however slow the machine is.
    assert math.floor(50 * (first_refill - after_last)) - 1 <= got
    assert got <= min(8, 50 * (end - before_last) + 1)
    assert got >= 4


def test_cost_and_peek_and_reset(client: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(client, "bytes", rate_per_s=1000, burst=1500, prefix=prefix)
    assert tb.peek(1500).allowed
    assert tb.try_acquire(1000).allowed
    p = tb.peek(1000)
    assert not p.allowed and 0.4 < p.retry_after_s <= 0.5
    assert tb.peek(1000).remaining >= p.remaining  # peek took nothing
    tb.reset()
    assert tb.peek(1500).allowed


def test_state_is_a_readable_hash_with_ttl(r: redis.Redis, prefix: str) -> None:
    # Slow refill: the numbers below hold however long a busy machine takes between calls.
    tb = TokenBucket(r, "api", rate_per_s=0.01, burst=5, prefix=prefix)
    tb.try_acquire(2)
    assert tb.key == f"{prefix}:{{tb:api}}"
    state = r.hgetall(tb.key)
    assert set(state) == {b"tokens", b"ts_us", b"rate", b"burst", b"exp_us"}
    assert float(state[b"tokens"]) == pytest.approx(3, abs=0.01)
    assert float(state[b"rate"]) == 0.01 and float(state[b"burst"]) == 5
    # Lives at least until it would be full again (200 s) plus one second of slack, at
    # most the longest refill (500 s) plus two; exp_us is the (server us) end of that TTL.
    pttl = r.pttl(tb.key)
    assert 190_000 < pttl <= 502_000
    assert 0 <= int(state[b"exp_us"]) - int(state[b"ts_us"]) <= 502_000_000


def test_ttl_is_set_only_when_the_bucket_would_outlive_it(r: redis.Redis, prefix: str) -> None:
    """A write that the TTL already covers (exp_us far enough) sends no PEXPIRE; one it
    does not cover, or an exp_us that is not to be trusted, sets the TTL again."""
    tb = TokenBucket(r, "api", rate_per_s=10, burst=100, prefix=prefix)
    assert tb.try_acquire()
    r.pexpire(tb.key, 100_000)              # a TTL longer than any this bucket would set
    assert tb.try_acquire()
    assert r.pttl(tb.key) > 50_000          # covered by exp_us: the TTL was left alone
    for untrusted in (b"0", b"inf", b"nan", b"1e300", b"junk"):
        r.hset(tb.key, "exp_us", untrusted)
        r.pexpire(tb.key, 100_000)
        assert tb.try_acquire()
        assert 0 < r.pttl(tb.key) <= 12_000, untrusted   # set again: 10 s refill + 2 s
        exp_us = float(r.hget(tb.key, "exp_us") or b"nan")
        assert math.isfinite(exp_us) and exp_us > 0, untrusted


def test_denials_write_nothing(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix)
    tb.try_acquire()
    before = r.hgetall(tb.key)
    assert not tb.try_acquire()
    assert r.hgetall(tb.key) == before


def test_acquire_waits_then_raises(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(r, "api", rate_per_s=20, burst=1, prefix=prefix)
    tb.try_acquire()
    t0 = time.monotonic()
    assert tb.acquire(timeout_s=1).allowed
    assert 0.03 < time.monotonic() - t0 < 5          # ~50 ms; later on a busy machine
    tb2 = TokenBucket(r, "slow", rate_per_s=0.05, burst=1, prefix=prefix)
    tb2.try_acquire()
    with pytest.raises(RateLimited) as info:
        tb2.acquire(timeout_s=0.2)
    assert info.value.reason == "slow" and 15 < info.value.retry_after_s <= 20


def test_sleep_is_injectable(r: redis.Redis, prefix: str) -> None:
    slept: list[float] = []

    def fake_sleep(s: float) -> None:
        slept.append(s)
        time.sleep(s)

    # 2/s: the token is 500 ms away, so acquire must sleep however slow the machine is.
    tb = TokenBucket(r, "api", rate_per_s=2, burst=1, prefix=prefix, sleep=fake_sleep)
    tb.try_acquire()
    tb.acquire(timeout_s=10)
    assert slept and 0 < slept[0] <= 0.5001


def test_two_instances_share_one_bucket(server_url: str, prefix: str) -> None:
    a = TokenBucket(redis.Redis.from_url(server_url), "api", rate_per_s=0.01, burst=3,
                    prefix=prefix)
    b = TokenBucket(redis.Redis.from_url(server_url, protocol=3, decode_responses=True), "api",
                    rate_per_s=0.01, burst=3, prefix=prefix)
    assert [a.try_acquire().allowed, b.try_acquire().allowed, a.try_acquire().allowed] == [True] * 3
    assert not b.try_acquire().allowed


def test_conflicting_configuration_is_reported(r: redis.Redis, prefix: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    TokenBucket(r, "api", rate_per_s=10, burst=5, prefix=prefix).try_acquire()
    other = TokenBucket(r, "api", rate_per_s=99, burst=5, prefix=prefix)
    with caplog.at_level(logging.WARNING, "distlb"):
        other.try_acquire()
        other.try_acquire()
    warnings = [m for m in caplog.messages if "different rate or burst" in m]
    assert len(warnings) == 1 and "'api'" in warnings[0]


def test_client_clock_skew_changes_nothing(r: redis.Redis, prefix: str) -> None:
    # The only client clock distlb uses is for local waiting; decisions come from
    # the server's TIME. A process whose clock is an hour off decides identically.
    skewed = TokenBucket(r, "api", rate_per_s=0.1, burst=3, prefix=prefix,
                         clock=lambda: time.monotonic() + 3600)
    honest = TokenBucket(r, "api", rate_per_s=0.1, burst=3, prefix=prefix)
    assert [skewed.try_acquire().allowed, honest.try_acquire().allowed,
            skewed.try_acquire().allowed, honest.try_acquire().allowed] == [True, True, True, False]
    assert 5 < honest.peek().retry_after_s <= 10


@pytest.mark.parametrize("kwargs, field", [
    ({"rate_per_s": 0, "burst": 1}, "rate_per_s"),
    ({"rate_per_s": -1, "burst": 1}, "rate_per_s"),
    ({"rate_per_s": float("nan"), "burst": 1}, "rate_per_s"),
    ({"rate_per_s": float("inf"), "burst": 1}, "rate_per_s"),
    ({"rate_per_s": "10", "burst": 1}, "rate_per_s"),
    ({"rate_per_s": True, "burst": 1}, "rate_per_s"),
    ({"rate_per_s": 1, "burst": 0}, "burst"),
    ({"rate_per_s": 1, "burst": 1e13}, "burst"),
    ({"rate_per_s": 1, "burst": 1, "on_store_error": "ignore"}, "on_store_error"),
    ({"rate_per_s": 1, "burst": 1, "expected_processes": 0}, "expected_processes"),
    ({"rate_per_s": 1, "burst": 1, "prefix": "a{b}"}, "prefix"),
])
def test_bad_configuration(r: redis.Redis, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        TokenBucket(r, "api", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_bad_cost(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(r, "api", rate_per_s=1, burst=5, prefix=prefix)
    with pytest.raises(ConfigError, match=r"cost: must be at most burst \(5\)"):
        tb.try_acquire(6)
    with pytest.raises(ConfigError, match="cost"):
        tb.try_acquire(0)
    assert r.exists(tb.key) == 0  # nothing reached the store
