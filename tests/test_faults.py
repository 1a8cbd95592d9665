"""Faults: script cache flushed, server stopped and restarted, FLUSHALL, a slow server."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

import distlb.aio as aio
from distlb import LeakyBucket, PriorityLimiter, StoreError, TokenBucket, TrafficShaper
from distlb.embedded import EmbeddedServer

pytestmark = pytest.mark.lua
# Tight timeouts and no client-side retries, as the README recommends for limiters:
# an outage should cost one short timeout, then the failure policy takes over.
FAST = dict(socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def test_noscript_recovery_sync(client: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(client, "api", rate_per_s=0.001, burst=3, prefix=prefix)
    assert tb.try_acquire().allowed
    client.script_flush()
    assert tb.try_acquire().allowed and tb.store_stats.fallbacks == 0
    client.script_flush()
    assert tb.try_acquire().allowed
    assert not tb.try_acquire().allowed  # still exactly 3: no call was lost or doubled


async def test_noscript_recovery_inside_a_pipeline(ar: redis.asyncio.Redis, prefix: str) -> None:
    tb = aio.TokenBucket(ar, "api", rate_per_s=0.001, burst=20, prefix=prefix)
    await tb.try_acquire()
    await ar.script_flush()
    results = await asyncio.gather(*[tb.try_acquire() for _ in range(30)])
    assert sum(d.allowed for d in results) == 19
    assert all(d.source == "store" for d in results)


def test_flushall_resets_to_full_and_keeps_working(own_server: EmbeddedServer, prefix: str) -> None:
    r = own_server.client()
    shaper = TrafficShaper.with_global_limit(r, 0.001, 2, prefix=prefix)
    shaper.set_client_rate_limit("a", 1, 1)
    assert shaper.try_acquire("a").allowed and not shaper.try_acquire("a").allowed
    r.flushall()  # also drops the script cache
    assert shaper.try_acquire("a").allowed  # fresh buckets, no errors
    assert shaper.limits() == {}


@pytest.mark.parametrize("policy, expect", [
    ("fail_open", [True] * 6), ("fail_closed", [False] * 6), ("local", [True, True] + [False] * 4),
])
def test_server_stopped_and_restarted(own_server: EmbeddedServer, prefix: str, policy: str,
                                      expect: list[bool], caplog: pytest.LogCaptureFixture) -> None:
    r = own_server.client(**FAST)
    tb = TokenBucket(r, "api", rate_per_s=0.01, burst=4, prefix=prefix, on_store_error=policy,
                     expected_processes=2, retry_store_after_s=0.2)
    assert tb.try_acquire().source == "store"
    own_server.stop()
    with caplog.at_level(logging.WARNING, "distlb"):
        t0 = time.monotonic()
        during = [tb.try_acquire() for _ in range(6)]
        elapsed = time.monotonic() - t0
        assert [d.allowed for d in during] == expect
        assert {d.source for d in during} == {policy}
        # One failed connect, then the guard skips the store: no timeout per call.
        assert elapsed < 0.5
        assert tb.store_stats.outages == 1 and tb.store_stats.fallbacks == 6
        own_server.start()
        time.sleep(0.25)
        back = tb.try_acquire()
    assert back.source == "store"
    assert any("unreachable" in m for m in caplog.messages)
    assert any("reachable again" in m for m in caplog.messages)


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed", "local"])
def test_every_primitive_follows_its_policy(own_server: EmbeddedServer, prefix: str,
                                            policy: str) -> None:
    r = own_server.client(**FAST)
    kw = dict(prefix=prefix, on_store_error=policy)
    objs = [
        lambda: TrafficShaper.with_global_limit(r, 10, 10, **kw).try_acquire("a"),
        lambda: LeakyBucket(r, "l", rate_per_s=10, capacity=5, **kw).try_acquire(),
        lambda: PriorityLimiter(r, "p", rate_per_s=10, burst=5, **kw).try_acquire(3),
    ]
    own_server.stop()
    for make in objs:
        d = make()
        assert d.source == policy
        assert d.allowed == (policy != "fail_closed")


def test_slow_server_times_out_into_the_policy(prefix: str) -> None:
    with EmbeddedServer(extra_args=["--enable-debug-command", "yes"]) as server:
        r = server.client(socket_timeout=0.1, socket_connect_timeout=0.1,
                          retry=Retry(NoBackoff(), 0))
        tb = TokenBucket(r, "api", rate_per_s=10, burst=10, prefix=prefix,
                         on_store_error="fail_closed", retry_store_after_s=0.1)
        assert tb.try_acquire().source == "store"
        sleeper = threading.Thread(target=lambda: server.client().execute_command(
            "DEBUG", "SLEEP", "0.5"))
        sleeper.start()
        time.sleep(0.05)
        d = tb.try_acquire()
        assert (d.allowed, d.source) == (False, "fail_closed")
        sleeper.join()
        time.sleep(0.15)
        r.connection_pool.reset()  # drop the connection that timed out mid-reply
        assert tb.try_acquire().source == "store"


def test_wrong_type_key_is_a_store_error_not_an_outage(r: redis.Redis, prefix: str) -> None:
    tb = TokenBucket(r, "api", rate_per_s=1, burst=1, prefix=prefix, on_store_error="fail_open")
    r.set(tb.key, "not a hash", ex=60)
    with pytest.raises(StoreError, match=r"bucket\.lua"):
        tb.try_acquire()
