"""Several rates on one name, checked and charged together in one script call, and
Limit.parse / parse_many."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

import distlb.aio as aio
from distlb import ConfigError, Limit, TokenBucket


def test_limit_parse() -> None:
    assert Limit.parse("100/second") == Limit(100, 100)
    assert Limit.parse("1000/hour burst 50") == Limit(1000 / 3600, 50)
    assert Limit.parse_many("10/s; 1000/h") == (Limit(10, 10), Limit(1000 / 3600, 1000))
    with pytest.raises(ConfigError, match="one rate"):
        Limit.parse("10/s; 20/m")
    with pytest.raises(ConfigError, match="rate"):
        Limit.parse("ten per second")
    with pytest.raises(ConfigError, match=r"rate_per_s|burst"):
        Limit.parse("1e13/s")                # the numeric ranges still apply


def test_every_rate_must_have_room(r: redis.Redis, prefix: str) -> None:
    # 5 per second (burst 5) and 7 per hour (burst 7): the hourly rate runs out first.
    tb = TokenBucket.from_rates(r, "api", "5/second; 7/hour", prefix=prefix)
    assert tb.limits == (Limit(5, 5), Limit(7 / 3600, 7))
    assert [tb.try_acquire().allowed for _ in range(5)] == [True] * 5
    # The per-second bucket refills (0.2 s a token); the hourly one has 2 tokens left.
    assert tb.acquire(timeout_s=30).allowed and tb.acquire(timeout_s=30).allowed
    denied = tb.try_acquire()
    assert not denied.allowed and "burst 7" in denied.explanation   # the hourly rate denies
    assert denied.retry_after_s > 60                                 # ~8.6 minutes a token
    keys = set(r.keys(f"{prefix}:*"))
    assert keys == {tb.key.encode(), f"{tb.key}:r2".encode()}
    assert all(r.pttl(k) > 0 for k in keys)


def test_a_denial_charges_no_rate(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket.from_rates(r, "api", [Limit(0.001, 3), Limit(0.001, 10)], prefix=prefix)
    assert all(tb.try_acquire().allowed for _ in range(3))
    for _ in range(5):
        assert not tb.try_acquire().allowed    # the first rate denies ...
    # ... and the second was charged only for the three admitted requests
    assert float(r.hget(f"{tb.key}:r2", "tokens") or 0) == pytest.approx(7, abs=0.01)
    tb.reset()
    assert r.exists(tb.key, f"{tb.key}:r2") == 0


def test_cost_must_fit_every_rate(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket.from_rates(r, "api", "100/s; 10/m", prefix=prefix)
    assert tb.try_acquire(cost=10).allowed
    with pytest.raises(ConfigError, match="cost"):
        tb.try_acquire(cost=11)               # above the smallest burst


@pytest.mark.parametrize("rates", ["", [], ["10/s"], [Limit(1, 1)] * 17])
def test_bad_rates(r: redis.Redis, prefix: str, rates: object) -> None:
    with pytest.raises(ConfigError):
        TokenBucket.from_rates(r, "api", rates, prefix=prefix)  # type: ignore[arg-type]


def test_asyncio_from_rates(server_url: str, prefix: str) -> None:
    async def run() -> list[bool]:
        ar = redis.asyncio.Redis.from_url(server_url)
        tb = aio.TokenBucket.from_rates(ar, "api", "3/hour; 100/second", prefix=prefix)
        out = [d.allowed for d in await asyncio.gather(*[tb.try_acquire() for _ in range(5)])]
        await tb.aclose()
        await ar.aclose()
        return out

    assert sorted(asyncio.run(run())) == [False, False, True, True, True]
