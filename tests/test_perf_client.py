"""Issue #12, client side: one asyncio batcher per client, denials answered locally."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.connection import Connection

import distlb.aio as aio
from distlb import Limit, TokenBucket, TrafficShaper

pytestmark = pytest.mark.lua


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many commands each write to the server carried, in order."""
    seen: list[int] = []
    real = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        seen.append(len(command) if isinstance(command, list) else 1)
        await real(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    yield seen


async def test_objects_on_one_client_share_one_write(server_url: str, prefix: str,
                                                     writes: list[int]) -> None:
    c = redis.asyncio.Redis.from_url(server_url)
    try:
        buckets = [aio.TokenBucket(c, f"b{i}", rate_per_s=0.001, burst=1, prefix=prefix)
                   for i in range(64)]
        shaper = aio.TrafficShaper.with_global_limit(c, 0.001, 1, prefix=prefix)
        # warm: the connection exists and the scripts are loaded (NOSCRIPT -> EVAL, once)
        await asyncio.gather(buckets[0].peek(), shaper.peek())
        writes.clear()
        results = await asyncio.gather(*[b.try_acquire() for b in buckets],
                                       shaper.try_acquire())
        assert all(d.allowed and d.source == "store" for d in results)
        # 65 decisions of 65 objects: one write carries them all (per object, 65 writes)
        assert len(writes) <= 2 and sum(writes) == 65, writes
    finally:
        await c.aclose()


def test_each_event_loop_has_its_own_batcher(server_url: str, prefix: str) -> None:
    # A batcher belongs to one loop: a second asyncio.run on the same client must not
    # find the first loop's batcher stuck "flushing" or its futures.
    c = redis.asyncio.Redis.from_url(server_url)
    tb = aio.TokenBucket(c, "b", rate_per_s=0.001, burst=4, prefix=prefix)

    async def two() -> list[bool]:
        ds = await asyncio.gather(tb.try_acquire(), tb.try_acquire())
        await c.connection_pool.disconnect()
        return [d.allowed for d in ds]

    assert asyncio.run(two()) == [True, True]
    assert asyncio.run(two()) == [True, True]
    asyncio.run(c.aclose())


def _script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.real_server  # counts round trips with INFO commandstats, which fakeredis lacks
def test_a_denial_is_answered_locally_until_it_expires(r: redis.Redis, prefix: str) -> None:
    clock = FakeClock()
    # 1 token per 100 s: the store's retry_after is ~100 s, whatever a slow machine does
    tb = TokenBucket(r, "api", rate_per_s=0.01, burst=3, prefix=prefix, clock=clock)
    assert tb.try_acquire(2).source == "store"  # 1 token left
    first = tb.try_acquire(2)
    assert not first.allowed and first.source == "store" and 90 < first.retry_after_s <= 200
    before = _script_calls(r)
    flood = [tb.try_acquire(c) for c in (2, 2, 3, 2.5) * 25]
    assert _script_calls(r) == before  # 100 denials, no round trip
    assert all(not d.allowed and d.source == "cache" for d in flood)
    assert flood[0].retry_after_s <= first.retry_after_s + 1e-9  # (float rounding)
    assert flood[0].explanation.startswith("denied by api")
    # A cheaper request than the one denied may fit: the store decides it.
    cheap = tb.try_acquire(1)
    assert cheap.allowed and cheap.source == "store"
    # The cached denial ends where the store's did (the clock read before the call left).
    clock.now += first.retry_after_s + 0.001
    assert tb.try_acquire(2).source == "store"
    assert _script_calls(r) == before + 2


def test_reset_and_a_raised_global_limit_end_the_cached_denial(r: redis.Redis,
                                                               prefix: str) -> None:
    tb = TokenBucket(r, "api", rate_per_s=0.01, burst=1, prefix=prefix)
    tb.try_acquire()
    assert tb.try_acquire().source == "store"
    assert tb.try_acquire().source == "cache"
    tb.reset()
    d = tb.try_acquire()
    assert d.allowed and d.source == "store"

    shaper = TrafficShaper.with_global_limit(r, 0.01, 1, client_limit=Limit(0.01, 5),
                                             prefix=prefix)
    assert shaper.try_acquire().allowed
    assert shaper.try_acquire().source == "store"
    assert shaper.try_acquire().source == "cache"          # global-only: cached
    assert shaper.try_acquire("alice").source == "store"   # per-client: always the store
    assert shaper.try_acquire(bytes=5).source == "store"
    shaper.set_global_limit(0.01, 3)  # (a higher burst adds no tokens: the store decides)
    assert shaper.try_acquire().source == "store"
    r.expire(shaper.limits_key, 60)


async def test_asyncio_denials_are_cached_too(ar: redis.asyncio.Redis, prefix: str) -> None:
    tb = aio.TokenBucket(ar, "api", rate_per_s=0.01, burst=1, prefix=prefix)
    await tb.try_acquire()
    assert (await tb.try_acquire()).source == "store"
    ds = await asyncio.gather(*[tb.try_acquire() for _ in range(50)])
    assert all(not d.allowed and d.source == "cache" for d in ds)


@pytest.mark.parametrize("reply", [b"1 0 1 1 4.5 0 2 10", "1 0 1 0 0.25 0.375 2 10",
                                   b"1 1 1 1 3 0 0.5 3"])
def test_the_lean_single_bucket_parse_equals_the_general_one(reply: Any) -> None:
    from distlb._core import bucket
    conflicts: list[int] = []
    spec = bucket.BucketSpec("k", "api", 2.0, 10.0, 1.0)
    one = bucket.plan("take", [spec], limits_key=None, limits_ttl_ms=0,
                      fallback=lambda: bucket.fixed(True, 1, "fail_open"),
                      on_conflict=lambda: conflicts.append(1))
    two = bucket.plan("take", [spec, bucket.BucketSpec("k2", "other", 1.0, 1.0, 1.0)],
                      limits_key=None, limits_ttl_ms=0,
                      fallback=lambda: bucket.fixed(True, 1, "fail_open"),
                      on_conflict=lambda: conflicts.append(1))
    lean = one.parse(reply)
    general = two.parse(reply)  # (the same reply names bucket 1 only)
    assert lean == general and lean.limits == general.limits
    assert hash(lean) == hash(general) and repr(lean) == repr(general)
    assert len(conflicts) == (2 if "1 1 1 1" in str(reply) else 0)
