"""Every script on a 3-master Redis Cluster, including NOSCRIPT recovery (asyncio: the
``*_cluster`` rows of tests/scenarios.py)."""

from __future__ import annotations

import pytest
import redis.cluster

from distlb import LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper

pytestmark = [pytest.mark.cluster, pytest.mark.lua]


def flush_scripts(rc: redis.cluster.RedisCluster) -> None:
    for node in rc.get_primaries():
        rc.get_redis_connection(node).script_flush()


def test_entities_spread_over_slots_and_each_stays_in_one(rc: redis.cluster.RedisCluster,
                                                          prefix: str) -> None:
    shapers = [TrafficShaper(rc, f"api{i}", global_limit=Limit(100, 10),
                             client_limit=Limit(10, 2), client_bandwidth=Limit(100, 100),
                             prefix=prefix) for i in range(12)]
    for s in shapers:
        s.set_client_rate_limit("vip", 50, 5)
        assert s.try_acquire("vip", bytes=10, backend="n1").allowed
    nodes = set()
    for s in shapers:
        slot = rc.keyslot(s.limits_key)
        assert {rc.keyslot(f"{s.key}:{p}") for p in ("global", "c:vip", "cb:vip")} == {slot}
        nodes.add(rc.nodes_manager.get_node_from_slot(slot).port)
    assert len(nodes) > 1  # a cluster really was exercised


def test_all_scripts_on_cluster_with_noscript(rc: redis.cluster.RedisCluster, prefix: str) -> None:
    tb = TokenBucket(rc, "api", rate_per_s=0.001, burst=2, prefix=prefix)
    lb = LeakyBucket(rc, "out", rate_per_s=10, capacity=2, prefix=prefix)
    pq = PriorityLimiter(rc, "pq", rate_per_s=0.001, burst=1, prefix=prefix)
    shaper = TrafficShaper(rc, "sh", client_limit=Limit(0.001, 1), prefix=prefix)
    for _ in range(2):
        flush_scripts(rc)
        assert tb.try_acquire().allowed
        assert lb.try_acquire().allowed
        flush_scripts(rc)
        shaper.set_client_rate_limit("z", 0.001, 1)
    assert not tb.try_acquire().allowed
    assert not lb.try_acquire().allowed
    assert pq.try_acquire(1).allowed and not pq.try_acquire(1).allowed
    assert shaper.try_acquire("z").allowed and not shaper.try_acquire("z").allowed
    tb.reset()
    assert tb.try_acquire().allowed
    assert all(d == 0 for d in (tb.store_stats.fallbacks, lb.store_stats.fallbacks))
