"""A breaker key of the wrong type (planted by hand) resets the breaker instead of failing
every call until the key expires, if it ever does. Planted keys get a TTL (conftest)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio

import distlb.aio as aio
from distlb import AdaptiveCircuitBreaker, Backend, BreakerSettings, CircuitBreaker, LoadBalancer
from tests.test_breaker_generations import trip

pytestmark = pytest.mark.lua


def breaker(r: Any, prefix: str, **kw: Any) -> CircuitBreaker:
    cfg: dict[str, Any] = dict(failure_threshold=2, success_threshold=1,
                               half_open_max_requests=1, open_timeout_s=0.2,
                               prefix=prefix, subscribe=False, max_staleness_s=0)
    cfg.update(kw)
    return CircuitBreaker(r, "node", **cfg)


def test_a_string_at_the_state_hash_resets_the_breaker(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix)
    trip(cb)
    r.set(cb.key, "garbage", ex=600)
    assert cb.can_attempt().allowed                    # reset: closed again, no error
    st = cb.state()
    assert st.state == "closed" and st.failures == 0 and st.forced is None
    cb.record_failure()                                # and it keeps working
    assert cb.state().failures == 1
    assert r.type(cb.key) == b"hash" and r.pttl(cb.key) > 0


@pytest.mark.parametrize("part", ["probes", "window"])
def test_a_wrong_type_at_any_key_resets_the_breaker(r: redis.Redis, prefix: str,
                                                    part: str) -> None:
    cb = AdaptiveCircuitBreaker(r, "node", prefix=prefix, min_calls=5, window_s=10,
                                buckets=2, subscribe=False, max_staleness_s=0)
    key = cb.keys[1] if part == "probes" else cb.keys[2]
    cb.record_failure()
    r.delete(key)
    r.set(key, "x", ex=600)
    # Every call reads the probes; every result is counted in the window: both failed
    # with WRONGTYPE until the planted key expired.
    cb.record_success()
    st = cb.state()
    assert st.state == "closed" and st.failures == 0, st     # reset, then counted
    window = r.hgetall(cb.keys[2])
    assert [v for k, v in window.items() if k.endswith(b":c")] == [b"1"], window
    assert r.type(cb.keys[1]) in (b"none", b"zset")


def test_values_edited_by_hand_read_as_defaults(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix)
    cb.record_failure()
    r.hset(cb.key, mapping={"state": "bogus", "forced": "maybe", "failures": "many"})
    st = cb.state()
    assert (st.state, st.forced, st.failures) == ("closed", None, 0)
    cb.record_failure()
    cb.record_failure()
    assert cb.state().state == "open"


def test_a_pool_keeps_serving_when_a_backend_breaker_key_is_corrupt(
        r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "users", prefix=prefix,
                      breaker=BreakerSettings(failure_threshold=2, open_timeout_s=0.2,
                                              max_staleness_s=0, subscribe=False))
    lb.add_backend(Backend("b0", "127.0.0.1:1"))
    cb = lb.breaker_for("b0")
    assert cb is not None
    r.set(cb.key, "x", ex=600)

    def fail(backend: Backend) -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            lb.execute(fail)
    assert cb.state().state == "open"                  # the breaker works again
    lb.close()


async def test_asyncio_breaker_resets_a_corrupt_key(ar: redis.asyncio.Redis,
                                                    prefix: str) -> None:
    cb = aio.CircuitBreaker(ar, "node", prefix=prefix, failure_threshold=2,
                            subscribe=False, max_staleness_s=0)
    await ar.set(cb.key, "x", ex=600)
    await cb.record_failure()
    assert (await cb.state()).failures == 1
