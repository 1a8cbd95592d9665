"""Breakers through distlb.aio and on the 3-master cluster."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
import redis.asyncio.cluster

import distlb.aio as aio
from distlb import CircuitBreaker, CircuitOpen
from distlb.embedded import EmbeddedCluster

pytestmark = pytest.mark.lua
CFG = dict(failure_threshold=2, open_timeout_s=0.2, success_threshold=1,
           half_open_max_requests=1, probe_lease_s=0.5)


async def test_async_transitions_call_and_guard(ar: redis.asyncio.Redis, prefix: str) -> None:
    cb = aio.CircuitBreaker(ar, "svc", prefix=prefix, **CFG)

    async def failing() -> None:
        raise ConnectionError("down")

    async def working() -> str:
        return "ok"

    assert await cb.call(working) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await cb.call(failing)
    assert (await cb.state()).state == "open"
    with pytest.raises(CircuitOpen):
        async with cb.guard():
            pass
    await asyncio.sleep(0.22)

    @cb
    async def decorated() -> str:
        return "probe ok"

    assert await decorated() == "probe ok"                 # the one probe closes it
    assert (await cb.state()).state == "closed"
    assert (await cb.can_attempt()).allowed


async def test_async_event_reaches_other_breaker(server_url: str, prefix: str) -> None:
    a = aio.CircuitBreaker(redis.asyncio.Redis.from_url(server_url), "svc", prefix=prefix,
                           **{**CFG, "open_timeout_s": 30})
    b = aio.CircuitBreaker(redis.asyncio.Redis.from_url(server_url), "svc", prefix=prefix,
                           **{**CFG, "open_timeout_s": 30})
    assert (await b.can_attempt()).allowed
    deadline = time.monotonic() + 2
    while b._subscribed_since() is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    calls = b.store_stats.calls
    await a.record_failure()
    await a.record_failure()
    while (await b.can_attempt()).allowed:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)
    assert b.store_stats.calls == calls


@pytest.mark.cluster
def test_cluster_breakers_and_events(cluster: EmbeddedCluster, prefix: str) -> None:
    rc = cluster.client()
    breakers = [CircuitBreaker(rc, f"node{i}", prefix=prefix, **{**CFG, "open_timeout_s": 30})
                for i in range(6)]
    watchers = [CircuitBreaker(cluster.client(), f"node{i}", prefix=prefix,
                               **{**CFG, "open_timeout_s": 30}) for i in range(6)]
    for w in watchers:
        assert w.can_attempt().allowed
    for node in rc.get_primaries():
        rc.get_redis_connection(node).script_flush()
    for b in breakers[::2]:
        b.record_failure()
        b.record_failure()
    deadline = time.monotonic() + 2
    for i, w in enumerate(watchers):
        if i % 2 == 0:
            while w.can_attempt().allowed:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        assert w.state().state == ("open" if i % 2 == 0 else "closed")
    slots = {rc.keyslot(b.key) for b in breakers}
    assert len({rc.nodes_manager.get_node_from_slot(s).port for s in slots}) > 1


@pytest.mark.cluster
async def test_async_cluster_breaker(cluster: EmbeddedCluster, prefix: str) -> None:
    nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes]
    arc = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes)
    cb = aio.CircuitBreaker(arc, "svc", prefix=prefix, **CFG)
    await cb.record_failure()
    await cb.record_failure()
    assert not (await cb.can_attempt()).allowed
    await cb.reset()
    assert (await cb.state()).state == "closed"
    await arc.aclose()
