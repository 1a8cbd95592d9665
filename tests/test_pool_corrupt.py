"""A pool key of the wrong type (planted by hand, or written by something else) resets that
key instead of failing every ``execute`` with WRONGTYPE until it expires, if it ever does.
Planted keys get a TTL (conftest fails a module that leaves a distlb key without one)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from distlb import Backend, LoadBalancer, NoBackendAvailable
from distlb.embedded import EmbeddedServer

pytestmark = pytest.mark.lua

PARTS = ["", "backends", "conns", "leases", "stats", "since"]


def key(prefix: str, part: str) -> str:
    return f"{prefix}:{{pool:api}}" + (f":{part}" if part else "")


def pool(r: Any, prefix: str, **kw: Any) -> LoadBalancer:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None, **kw)
    lb.add_backend(Backend("n1", "10.0.0.1:80"))
    lb.add_backend(Backend("n2", "10.0.0.2:80"))
    return lb


@pytest.mark.parametrize("release", ["sync", "deferred"])
@pytest.mark.parametrize("part", PARTS, ids=[p or "main" for p in PARTS])
def test_a_wrong_type_at_a_pool_key_resets_that_key(r: redis.Redis, prefix: str, part: str,
                                                    release: str) -> None:
    lb = pool(r, prefix, release=release)
    late = None
    try:
        for _ in range(4):
            assert lb.execute(lambda b: "ok") == "ok"
        lb.flush_releases()
        k = key(prefix, part)
        assert r.exists(k), k
        expected = r.type(k)
        r.delete(k)
        r.set(k, "garbage", ex=600)
        # Every call failed with StoreError (WRONGTYPE) until the planted key expired: in
        # a running process, and in one that starts now (it reads the whole registry).
        late = LoadBalancer(r, "api", prefix=prefix, breaker=None, release=release)
        if part == "backends":
            # The registry itself was lost: an empty pool, told as such, then rebuilt.
            with pytest.raises(NoBackendAvailable):
                late.execute(lambda b: "ok")
            lb.add_backend(Backend("n1", "10.0.0.1:80"))
            # The other process hears of it by the registry event (or its next refresh).
            deadline = time.monotonic() + 30
            while True:
                try:
                    late.execute(lambda b: "ok")
                    break
                except NoBackendAvailable:
                    assert time.monotonic() < deadline, "the rebuilt registry never seen"
                    time.sleep(0.01)
        for _ in range(6):
            assert lb.execute(lambda b: "ok") == "ok"
            assert late.execute(lambda b: "ok") == "ok"
        lb.flush_releases()
        late.flush_releases()
        if part == "since" and not r.exists(k):
            pass       # deleted: every backend reads as joined long ago (no slow start)
        else:          # reset: the right type again, with its TTL
            assert r.type(k) == expected and r.pttl(k) > 0, (k, r.type(k), r.pttl(k))
        # The pool still counts: no connection left held, requests recorded. flush_releases()
        # also waits for a release the background flusher took just before it.
        stats = late.get_statistics()
        assert stats.connections == 0, stats
        assert sum(b.requests for b in stats.per_backend) >= 12, stats
        assert {b.id for b in late.backends()} <= {"n1", "n2"}
    finally:
        lb.close()
        if late is not None:
            late.close()


def test_conns_rebuilt_from_the_leases_held(r: redis.Redis, prefix: str) -> None:
    """A conns hash replaced by hand while leases are held: the counts come back from the
    leases zset (not zeros), so the connections still held are counted and given back."""
    lb = pool(r, prefix)
    try:
        with lb.connection() as b:
            k = key(prefix, "conns")
            r.delete(k)
            r.set(k, "garbage", ex=600)
            assert lb.execute(lambda b: "ok") == "ok"
            assert int(r.hget(k, b.id) or 0) >= 1, r.hgetall(k)
        assert all(v == b"0" for v in r.hgetall(k).values()), r.hgetall(k)
        assert r.pttl(k) > 0
    finally:
        lb.close()


def test_the_reset_is_logged_by_the_server(own_server: EmbeddedServer, prefix: str) -> None:
    c = redis.Redis.from_url(own_server.url)
    lb = pool(c, prefix)
    try:
        lb.execute(lambda b: None)
        k = key(prefix, "leases")
        c.delete(k)
        c.set(k, "garbage", ex=600)
        lb.execute(lambda b: None)
        assert "distlb: pool api reset: wrong type at " + k in own_server.log_tail(200)
    finally:
        lb.close()
        c.close()
