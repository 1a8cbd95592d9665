"""One StoreOptions object, many primitives, a real server: they share its settings.

The options' prefix is where every primitive (and a pool's breakers) keeps its keys,
and its failure policy is what every one of them does when the server goes away.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from distlb import (
    Backend,
    BreakerSettings,
    CircuitBreaker,
    LoadBalancer,
    RetryBudget,
    StoreOptions,
    TokenBucket,
)
from distlb.embedded import EmbeddedServer

pytestmark = pytest.mark.lua
FAST = dict(socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        time.sleep(0.02)


def test_primitives_built_from_one_options_object_share_its_prefix_and_policy(
        own_server: EmbeddedServer, prefix: str) -> None:
    r = own_server.client(**FAST)
    opts = StoreOptions(prefix=prefix, on_store_error="fail_closed", retry_store_after_s=0.2)
    tb = TokenBucket(r, "api", rate_per_s=0.01, burst=5, options=opts)
    budget = RetryBudget(r, "api", options=opts)
    cb = CircuitBreaker(r, "api", options=opts, failure_threshold=2)
    pool = LoadBalancer(r, "pool", options=opts, breaker=BreakerSettings(failure_threshold=2))
    try:
        pool.add_backend(Backend("b1", "127.0.0.1:1"))
        backend_cb = pool.breaker_for("b1")
        assert backend_cb is not None and backend_cb.options is opts
        assert tb.try_acquire().source == "store"
        assert budget.try_withdraw().source == "store"
        backend_cb.record_failure()
        # Every key of every one of them is under the options' prefix, on the server.
        keys = {k.decode() for k in r.scan_iter(match=f"{prefix}:*")}
        kinds = {k.split("{", 1)[1].split(":", 1)[0] for k in keys}
        assert {"tb", "rb", "pool", "cb"} <= kinds, keys
        assert not [k for k in r.scan_iter(match="distlb:*") if b"pool/b1" in k or b"api" in k]

        own_server.stop()
        # The shared policy: every primitive fails closed, none falls back to fail_open.
        d = tb.try_acquire()
        assert (d.allowed, d.source) == (False, "fail_closed")
        w = budget.try_withdraw()
        assert (w.allowed, w.source) == (False, "fail_closed")
        a = cb.can_attempt()          # never called before: needs the store
        assert (a.allowed, a.source) == (False, "fail_closed")
        assert all(x.store_stats.fallbacks >= 1 for x in (tb, budget, cb))
    finally:
        own_server.start()
    # Back: each resumes on its own (the options' retry interval), no restart needed.
    wait_for(lambda: tb.try_acquire().source == "store", "the bucket back on the store")
    wait_for(lambda: cb.can_attempt().source != "fail_closed", "the breaker back on the store")
    for obj in (tb, budget, cb, pool):
        obj.close()


def test_keywords_and_options_build_the_same_primitive(own_server: EmbeddedServer,
                                                       prefix: str) -> None:
    r = own_server.client()
    by_keywords = TokenBucket(r, "same", rate_per_s=0.01, burst=2, prefix=prefix,
                              on_store_error="local")
    by_options = TokenBucket(r, "same", rate_per_s=0.01, burst=2,
                             options=StoreOptions(prefix=prefix, on_store_error="local"))
    assert by_keywords.options == by_options.options and by_keywords.key == by_options.key
    # One bucket on the server: the two objects share its two tokens.
    assert by_keywords.try_acquire().allowed and by_options.try_acquire().allowed
    assert not by_keywords.try_acquire().allowed and not by_options.try_acquire().allowed
