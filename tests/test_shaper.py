"""TrafficShaper: global + per-client + bandwidth limits, checked together atomically."""

from __future__ import annotations

import math
import time

import pytest
import redis

from distlb import ConfigError, Limit, RateLimited, TrafficShaper

pytestmark = pytest.mark.lua


def test_seed_api_global_limit(client: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper.with_global_limit(client, 10000.0, 1000, prefix=prefix)
    t0 = time.monotonic()
    allowed = sum(shaper.try_acquire("client1", cost=100).allowed for _ in range(12))
    refilled = (time.monotonic() - t0) * 10000
    assert 10 <= allowed <= 10 + refilled / 100 + 1
    slow = TrafficShaper.with_global_limit(client, 1.0, 2, prefix=prefix + "s")
    assert [slow.try_acquire("client1").allowed for _ in range(3)] == [True, True, False]
    assert slow.try_acquire("client1").denied_by == ("global",)


def test_client_limit_and_explanation(client: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(client, "api", global_limit=Limit(1000, 100),
                           client_limit=Limit(1, 2), prefix=prefix)
    assert [shaper.try_acquire("alice").allowed for _ in range(3)] == [True, True, False]
    d = shaper.try_acquire("alice")
    assert d.denied_by == ("client:alice",) and d.limit == "client:alice"
    assert "client:alice (1/s, burst 2" in d.explanation
    assert shaper.try_acquire("bob").allowed  # another client has its own bucket


def test_global_deny_does_not_charge_the_client(client: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(client, "api", global_limit=Limit(0.001, 1),
                           client_limit=Limit(0.001, 5), prefix=prefix)
    assert shaper.try_acquire("bob").allowed          # drains the global bucket
    for _ in range(3):
        d = shaper.try_acquire("alice")
        assert d.denied_by == ("global",)
    alice = {s.label: s for s in shaper.peek("alice").limits}["client:alice"]
    assert alice.remaining == pytest.approx(5, abs=0.01)


def test_client_deny_does_not_charge_global(client: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(client, "api", global_limit=Limit(0.001, 3),
                           client_limit=Limit(0.001, 1), prefix=prefix)
    assert shaper.try_acquire("alice").allowed
    for _ in range(5):
        assert shaper.try_acquire("alice").denied_by == ("client:alice",)
    assert [shaper.try_acquire(c).allowed for c in ("bob", "carol", "dave")] == [True, True, False]


def test_set_client_rate_limit_reaches_other_processes(server_url: str, prefix: str) -> None:
    a = TrafficShaper(redis.Redis.from_url(server_url), "api", client_limit=Limit(1, 1),
                      prefix=prefix)
    b = TrafficShaper(redis.Redis.from_url(server_url, decode_responses=True), "api",
                      client_limit=Limit(1, 1), prefix=prefix)
    assert a.set_client_rate_limit("client1", 0.5, 50)
    assert not a.set_client_rate_limit("client1", 0.5, 50)  # unchanged
    assert b.limits() == {"c:client1": Limit(0.5, 50.0)}
    assert sum(b.try_acquire("client1").allowed for _ in range(60)) == 50
    assert a.remove_client_rate_limit("client1")
    b.reset_client("client1")
    assert sum(b.try_acquire("client1").allowed for _ in range(5)) == 1


def test_unlimited_when_nothing_is_configured(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "open", prefix=prefix)
    d = shaper.try_acquire("x")
    assert d.allowed and d.limits == () and math.isinf(d.remaining)
    assert r.keys(f"{prefix}:*") == []


def test_bandwidth_per_client_and_backend(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "bw", client_bandwidth=Limit(1000, 1000), prefix=prefix)
    shaper.set_backend_bandwidth_limit("node1", 100, 2000)
    assert shaper.try_acquire("alice", bytes=800, backend="node1").allowed
    d = shaper.try_acquire("alice", bytes=800, backend="node1")
    assert d.denied_by == ("client_bandwidth:alice",)
    assert 0.55 < d.retry_after_s <= 0.6
    assert shaper.try_acquire("bob", bytes=700, backend="node1").allowed
    d = shaper.try_acquire("carol", bytes=600, backend="node1")
    assert d.denied_by == ("backend_bandwidth:node1",)
    # A request with no bytes is not checked against bandwidth at all.
    assert shaper.try_acquire("alice").allowed


def test_bytes_above_a_shared_burst_can_never_pass(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "bw", prefix=prefix)
    shaper.set_client_bandwidth_limit("alice", 100, 100)
    d = shaper.try_acquire("alice", bytes=500)
    assert not d.allowed and math.isinf(d.retry_after_s)
    assert "never" in d.explanation
    with pytest.raises(RateLimited):
        shaper.acquire("alice", bytes=500, timeout_s=5)


def test_dynamic_global_limit(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper.with_global_limit(r, 1, 1, prefix=prefix)
    shaper.set_global_limit(10, 10)
    shaper.reset()
    assert sum(shaper.try_acquire().allowed for _ in range(12)) == 10


def test_acquire_blocks_until_admitted(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", client_limit=Limit(50, 1), prefix=prefix)
    shaper.try_acquire("a")
    assert shaper.acquire("a", timeout_s=1).allowed
    with pytest.raises(RateLimited, match="client:a"):
        shaper.acquire("a", timeout_s=0)


def test_keys_share_one_hash_tag(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(10, 10), client_limit=Limit(5, 5),
                           client_bandwidth=Limit(10, 10), prefix=prefix)
    shaper.set_client_rate_limit("we{ird}:id", 5, 5)
    shaper.try_acquire("we{ird}:id", bytes=3, backend="n:1")
    keys = sorted(k.decode() for k in r.keys(f"{prefix}:*"))
    assert keys == [f"{prefix}:{{ts:api}}:{p}" for p in
                    ("c:we%7Bird%7D%3Aid", "cb:we%7Bird%7D%3Aid", "global", "limits")]
    assert all(r.pttl(k) > 0 for k in keys)


@pytest.mark.parametrize("call, field", [
    (lambda s: s.try_acquire(""), "client_id"),
    (lambda s: s.try_acquire(7), "client_id"),
    (lambda s: s.try_acquire("a", cost=-1), "cost"),
    (lambda s: s.try_acquire("a", bytes=float("nan")), "bytes"),
    (lambda s: s.try_acquire("a", cost=20), "cost"),
    (lambda s: s.set_client_rate_limit("a", 0, 1), "rate_per_s"),
    (lambda s: s.set_client_rate_limit("a", 1, -1), "burst"),
    (lambda s: s.set_backend_bandwidth_limit("", 1, 1), "backend"),
])
def test_bad_input(r: redis.Redis, prefix: str, call: object, field: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(10, 10), prefix=prefix)
    with pytest.raises(ConfigError, match=field):
        call(shaper)  # type: ignore[operator]
    assert r.keys(f"{prefix}:*") == []


def test_bad_limit_type(r: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="global_limit"):
        TrafficShaper(r, "api", global_limit=(10, 10))  # type: ignore[arg-type]
