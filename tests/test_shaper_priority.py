"""TrafficShaper priority (issue #13 item 3): the pool's reserve rule on the global limit,
per-level counters in ``:prio``, an exact denial cache, and bucket.lua's lighter
limits-hash writes."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from distlb import ConfigError, Limit, TrafficShaper

pytestmark = pytest.mark.lua


def counters(r: redis.Redis, shaper: TrafficShaper) -> dict[str, str]:
    raw = r.hgetall(shaper.prio_key)
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}


@pytest.mark.parametrize("bad", [-1, 10, True, 1.0, "5"])
def test_priority_is_validated_before_the_store(r: redis.Redis, prefix: str, bad: Any) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(10, 10), prefix=prefix)
    for call in (lambda: shaper.try_acquire(priority=bad),
                 lambda: shaper.try_acquire("alice", priority=bad),
                 lambda: shaper.peek(priority=bad),
                 lambda: shaper.acquire(priority=bad, timeout_s=0)):
        with pytest.raises(ConfigError, match=r"priority.*\[0, 9\]"):
            call()
    assert r.keys(f"{prefix}:*") == []             # nothing reached the store


@pytest.mark.parametrize(("field", "value"), [("priority_reserve", 1.5),
                                              ("priority_min_share", 0.2),
                                              ("priority_window_s", 0.01)])
def test_priority_settings_are_validated(r: redis.Redis, field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        TrafficShaper(r, "api", global_limit=Limit(10, 10), **{field: value})


def test_lower_levels_are_shed_first_and_counted(client: redis.Redis, prefix: str) -> None:
    # A bucket that does not refill during the test: 10 tokens. Level 9 asks first, so a
    # reserve of 0.5 x 10 x (9 - 0) / 9 = 5 tokens is held back from level 0.
    shaper = TrafficShaper(client, "api", global_limit=Limit(1e-6, 10), prefix=prefix)
    # A level never admitted asks without reserve (aging: its last admission is "never").
    assert shaper.try_acquire(priority=9).allowed                      # 9 left
    zero = [shaper.try_acquire(priority=0).allowed for _ in range(6)]
    assert zero == [True] * 4 + [False] * 2     # 9 (aging), then 8, 7, 6 -> 5 < 1 + 5
    d = shaper.try_acquire(priority=0)
    assert not d.allowed and d.source == "store"  # shed by the reserve: never cached
    assert d.remaining == pytest.approx(5) and d.retry_after_s > 1000
    # The reserve is for higher levels: 5 keeps less back than 0 does (0.5 x 10 x 4 / 9).
    assert [shaper.try_acquire(priority=5).allowed for _ in range(3)] == [True, True, False]
    # 5 (aging), then 4 >= 1 + 2.2; 3 is not
    assert [shaper.try_acquire(priority=9).allowed for _ in range(4)] == [True] * 3 + [False]
    c = counters(client, shaper)
    assert (c["0:admitted"], c["0:denied"], c["0:shed"]) == ("4", "3", "3")
    assert (c["5:admitted"], c["5:denied"], c["5:shed"]) == ("2", "1", "1")
    assert (c["9:admitted"], c["9:denied"], c.get("9:shed")) == ("4", "1", None)
    assert c["top"] == "9"
    assert 0 < client.pttl(shaper.prio_key) <= shaper.config_ttl_ms


def test_one_level_alone_has_the_whole_burst(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 5), prefix=prefix)
    assert [shaper.try_acquire(priority=0).allowed for _ in range(6)] == [True] * 5 + [False]


def test_unranked_calls_keep_the_old_path(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 5), prefix=prefix)
    assert shaper.try_acquire(priority=9).allowed
    # Without priority= a call neither holds nor respects a reserve, and is not counted.
    assert [shaper.try_acquire().allowed for _ in range(5)] == [True] * 4 + [False]
    assert counters(r, shaper)["9:admitted"] == "1" and "0:admitted" not in counters(r, shaper)


def test_the_client_limit_keeps_no_reserve(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 100),
                           client_limit=Limit(1e-6, 4), prefix=prefix)
    assert shaper.try_acquire("bob", priority=9).allowed                # top = 9
    # alice at level 0: the global bucket (99 tokens) covers her reserve; her own limit
    # of 4 is hers alone, all of it.
    assert [shaper.try_acquire("alice", priority=0).allowed for _ in range(5)] == \
        [True] * 4 + [False]
    assert shaper.try_acquire("alice", priority=9).denied_by == ("client:alice",)


def test_a_cached_denial_is_exact_for_every_level(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 3), prefix=prefix)
    assert shaper.try_acquire(priority=9).allowed          # 2 left, top = 9
    assert shaper.try_acquire(priority=0).allowed          # 1 left (its first: aging)
    # Level 0 is denied by the reserve alone (1 token, needs 1 + 1.5): not cached, so a
    # higher level right after is asked of the store, and admitted.
    for _ in range(2):
        d = shaper.try_acquire(priority=0)
        assert not d.allowed and d.source == "store"
    assert shaper.try_acquire(priority=9).allowed           # 0 left
    # Now the bucket lacks the cost itself: that holds for every level until it refills.
    d = shaper.try_acquire(priority=0)
    assert not d.allowed and d.source == "store"
    for level in (0, 5, 9, None):
        cached = shaper.try_acquire(priority=level)
        assert not cached.allowed and cached.source == "cache"
        assert 0 < cached.retry_after_s <= 1e6
    # A cheaper request than the cached one asks the store (it may fit).
    assert shaper.try_acquire(cost=0.5, priority=9).source == "store"


def test_peek_with_a_priority_neither_charges_nor_counts(r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 10), prefix=prefix)
    assert shaper.try_acquire(priority=9).allowed
    assert shaper.try_acquire(priority=0).allowed          # 8 left (its first: aging)
    d = shaper.peek(priority=0)                            # 8 >= 1 + 5
    assert d.allowed and d.remaining == pytest.approx(8)
    assert not shaper.peek(priority=0, cost=4).allowed     # 8 < 4 + 5
    c = counters(r, shaper)
    assert (c["0:admitted"], c.get("0:denied")) == ("1", None)
    assert shaper.peek(priority=0).remaining == pytest.approx(8)


def test_admission_passes_the_priority(r: redis.Redis, prefix: str) -> None:
    # The interface a pool charges its traffic_shaper through (LoadBalancer.execute).
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 10), prefix=prefix)
    assert shaper._run(shaper.admission(None, 0, 9)).allowed
    assert shaper._run(shaper.admission("alice", 0, 9)).allowed
    assert counters(r, shaper)["9:admitted"] == "2"


def test_priority_on_a_cluster(rc: Any, prefix: str) -> None:
    shaper = TrafficShaper(rc, "api", global_limit=Limit(1e-6, 3),
                           client_limit=Limit(1e-6, 3), prefix=prefix)
    assert shaper.try_acquire("alice", priority=9).allowed
    assert shaper.try_acquire(priority=0).allowed          # 2 -> 1 (its first: aging)
    assert not shaper.try_acquire("bob", priority=0).allowed   # 1 < 1 + 1.5
    assert counters(rc, shaper)["0:shed"] == "1"


def test_the_limits_hash_ttl_follows_the_buckets(r: redis.Redis, prefix: str) -> None:
    # bucket.lua refreshes the limits hash only when a bucket gets a new TTL, to
    # config_ttl + that TTL: it still outlives the last admitted request by config_ttl.
    shaper = TrafficShaper(r, "api", global_limit=Limit(1000, 10), config_ttl_s=60,
                           prefix=prefix)
    assert shaper.set_client_rate_limit("alice", 5, 5)
    r.pexpire(shaper.limits_key, 5000)                    # as if set long ago
    assert shaper.try_acquire("alice").allowed            # new buckets: new TTLs
    assert 60_000 < r.pttl(shaper.limits_key) <= 60_000 + 3_010
    r.pexpire(shaper.limits_key, 5000)
    assert shaper.try_acquire("alice").allowed            # the buckets' TTLs still cover it
    assert r.pttl(shaper.limits_key) <= 5000              # so no PEXPIRE on this call


def test_priority_survives_a_script_flush(own_server: Any) -> None:
    r = redis.Redis.from_url(own_server.url)
    shaper = TrafficShaper(r, "api", global_limit=Limit(1e-6, 3), client_limit=Limit(1e-6, 3))
    assert shaper.try_acquire(priority=9).allowed
    r.script_flush()                                    # NOSCRIPT: the runner sends EVAL
    assert shaper.try_acquire("alice", priority=9).allowed
    r.script_flush()
    assert shaper.try_acquire().allowed
    assert counters(r, shaper)["9:admitted"] == "2"
    r.close()


def test_a_pool_ranks_its_shapers_admission_at_the_contexts_priority(
        r: redis.Redis, prefix: str) -> None:
    # The pool charges its traffic_shaper at ctx.priority (0 without a context), by the
    # same reserve rule as its own rate_limit: with level 9 asking, level 0 keeps off the
    # reserve (0.5 x burst 10 = 5 tokens) while level 9 is still admitted.
    from distlb import Backend, Context, LoadBalancer, RateLimited

    shaper = TrafficShaper(r, "edge", global_limit=Limit(0.001, 10), prefix=prefix)
    lb = LoadBalancer(r, "pool", prefix=prefix, breaker=None, subscribe=False,
                      traffic_shaper=shaper)
    lb.add_backend(Backend("a", "10.0.0.1:80"))
    assert lb.execute(lambda b: b.id, ctx=Context(priority=9)) == "a"   # 10 -> 9, top 9
    lows = 0
    for _ in range(10):
        try:
            lb.execute(lambda b: b.id)                      # no context: level 0
            lows += 1
        except RateLimited:
            break
    assert lows == 4                                         # 9, 8, 7, 6 -> 5 left: shed
    assert lb.execute(lambda b: b.id, ctx=Context(priority=9)) == "a"   # the reserve is 9's
    c = counters(r, shaper)
    assert (c["9:admitted"], c["0:admitted"], c["0:shed"]) == ("2", "4", "1")
    lb.close()
