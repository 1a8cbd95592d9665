"""Circuit breakers on a real server: every transition, probes, forcing, fast path, policies."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import redis.cluster

from distlb import (
    AdaptiveCircuitBreaker,
    CircuitBreaker,
    CircuitOpen,
    ConfigError,
    Transition,
)
from distlb.embedded import EmbeddedServer

pytestmark = pytest.mark.lua
FAST = dict(open_timeout_s=0.2, probe_lease_s=0.3)


def breaker(client: Any, prefix: str, **kw: Any) -> CircuitBreaker:
    cfg: dict[str, Any] = dict(failure_threshold=3, success_threshold=2,
                               half_open_max_requests=2, prefix=prefix, **FAST)
    cfg.update(kw)
    return CircuitBreaker(client, "node1", **cfg)


def test_every_transition(client: redis.Redis, prefix: str) -> None:
    check_every_transition(breaker(client, prefix))


@pytest.mark.cluster
def test_every_transition_on_cluster(rc: redis.cluster.RedisCluster, prefix: str) -> None:
    check_every_transition(breaker(rc, prefix))


def check_every_transition(cb: CircuitBreaker) -> None:
    assert cb.state().state == "closed"
    cb.record_failure()
    cb.record_failure()
    assert cb.state().failures == 2
    cb.record_success()                                   # a success resets the count
    assert cb.state().failures == 0
    for _ in range(3):
        cb.record_failure()
    st = cb.state()
    assert st.state == "open" and 0.1 < st.retry_after_s <= 0.2
    assert not cb.can_attempt().allowed
    time.sleep(0.22)
    probe = cb.can_attempt()                              # open -> half-open
    assert probe.allowed and probe.state == "half_open" and probe.permit
    cb.record_failure(probe)                              # half-open -> open
    assert cb.state().state == "open"
    time.sleep(0.22)
    p1, p2 = cb.can_attempt(), cb.can_attempt()
    assert p1.permit and p2.permit and p1.permit != p2.permit
    refused = cb.can_attempt()                            # both probe slots taken
    assert not refused.allowed and refused.state == "half_open"
    cb.record_success(p1)
    assert cb.state().state == "half_open"
    cb.record_success(p2)                                 # half-open -> closed
    st = cb.state()
    assert st.state == "closed" and st.failures == 0 and st.probes_in_flight == 0


def test_state_hash_is_readable_and_expires(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, ttl_s=60)
    for _ in range(3):
        cb.record_failure()
    h = {k.decode(): v.decode() for k, v in r.hgetall(cb.key).items()}
    assert h["state"] == "open" and h["failures"] == "3" and h["forced"] == ""
    assert int(h["version"]) >= int(h["opened_us"]) > 1.7e15
    assert 59_000 < r.pttl(cb.key) <= 60_000


def test_probe_slot_of_a_dead_process_expires(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, half_open_max_requests=2, success_threshold=1)
    for _ in range(3):
        cb.record_failure()
    time.sleep(0.22)
    assert cb.can_attempt().permit and cb.can_attempt().permit   # two probes, never returned
    assert not cb.can_attempt().allowed
    time.sleep(0.32)                                             # their leases expire
    probe = cb.can_attempt()
    assert probe.allowed and probe.permit
    cb.record_success(probe)
    assert cb.state().state == "closed"


def test_force_open_and_closed_reach_other_instances(server_url: str, prefix: str) -> None:
    a = breaker(redis.Redis.from_url(server_url), prefix)
    b = breaker(redis.Redis.from_url(server_url, decode_responses=True), prefix)
    a.force_open()
    deadline = time.monotonic() + 1
    while b.can_attempt().allowed:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert b.state().forced == "open"
    time.sleep(0.25)                                     # no half-open while forced
    assert not b.can_attempt().allowed
    a.force_closed()
    for _ in range(5):
        b.record_failure()                               # forced closed never trips
    assert b.state().state == "closed" and b.can_attempt().allowed
    a.reset()
    st = b.state()
    assert (st.state, st.forced, st.failures) == ("closed", None, 0)


def test_closed_fast_path_costs_no_round_trip(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix)
    cb.can_attempt()
    calls = cb.store_stats.calls
    for _ in range(1000):
        assert cb.can_attempt().source == "cache"
        cb.record_success()
    assert cb.store_stats.calls == calls


def test_trip_reaches_another_process_view_by_event(server_url: str, prefix: str) -> None:
    a = breaker(redis.Redis.from_url(server_url), prefix, open_timeout_s=30)
    b = breaker(redis.Redis.from_url(server_url), prefix, open_timeout_s=30)
    seen: list[Transition] = []
    b.add_listener(seen.append)
    assert b.can_attempt().allowed
    deadline = time.monotonic() + 2
    while b._subscribed_since() is None:                 # wait for the subscription
        assert time.monotonic() < deadline
        time.sleep(0.01)
    calls = b.store_stats.calls
    for _ in range(3):
        a.record_failure()
    t0 = time.monotonic()
    while b.can_attempt().allowed:
        assert time.monotonic() - t0 < 1
        time.sleep(0.001)
    assert b.store_stats.calls == calls                  # b learned it from the event alone
    assert [(t.from_state, t.to_state, t.origin) for t in seen] == [("closed", "open", "event")]


def test_without_subscription_staleness_is_bounded(server_url: str, prefix: str) -> None:
    a = breaker(redis.Redis.from_url(server_url), prefix, open_timeout_s=30)
    b = breaker(redis.Redis.from_url(server_url), prefix, open_timeout_s=30, subscribe=False,
                max_staleness_s=0.2)
    assert b.can_attempt().source == "store"
    assert b.can_attempt().source == "cache"
    for _ in range(3):
        a.record_failure()
    time.sleep(0.21)
    d = b.can_attempt()
    assert not d.allowed and d.source == "store"


def test_call_decorator_and_guard(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, failure_on=(ConnectionError,), ignore=(ConnectionResetError,),
                 slow_call_s=0.05)

    def backend(kind: str) -> str:
        if kind == "fail":
            raise ConnectionRefusedError("down")
        if kind == "ignored":
            raise ConnectionResetError("not the backend's fault")
        if kind == "bug":
            raise KeyError("a bug in the caller, not a backend failure")
        if kind == "slow":
            time.sleep(0.06)
        return kind

    flaky = cb(backend)

    assert flaky("ok") == "ok"
    with pytest.raises(ConnectionRefusedError):
        flaky("fail")
    for kind, exc in (("ignored", ConnectionResetError), ("bug", KeyError)):
        with pytest.raises(exc):
            flaky(kind)
    assert cb.state().failures == 1
    assert cb.call(backend, "slow") == "slow"               # slow counts as a failure
    assert cb.state().failures == 2
    with pytest.raises(ConnectionRefusedError), cb.guard():
        raise ConnectionRefusedError("down")
    assert cb.state().state == "open"
    with pytest.raises(CircuitOpen) as info:
        flaky("ok")
    assert info.value.state == "open" and 0 < info.value.retry_after_s <= 0.2
    with pytest.raises(CircuitOpen), cb.guard():
        pass


@pytest.mark.parametrize("policy, allowed", [("fail_open", True), ("fail_closed", False),
                                             ("local", True)])
def test_store_outage_follows_the_policy(own_server: EmbeddedServer, prefix: str, policy: str,
                                         allowed: bool) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    r = own_server.client(socket_timeout=0.2, socket_connect_timeout=0.2,
                          retry=Retry(NoBackoff(), 0))
    cb = breaker(r, prefix, on_store_error=policy, retry_store_after_s=0.2, subscribe=False,
                 max_staleness_s=0)
    assert cb.can_attempt().source == "store"
    own_server.stop()
    a = cb.can_attempt()
    assert (a.allowed, a.source) == (allowed, policy)
    if policy == "local":                                  # the local twin trips by itself
        for _ in range(3):
            cb.record_failure()
        assert not cb.can_attempt().allowed
    own_server.start()
    time.sleep(0.25)
    assert cb.can_attempt().source == "store"


def test_adaptive_trips_on_rate_after_min_calls(client: redis.Redis, prefix: str) -> None:
    cb = AdaptiveCircuitBreaker(client, "api", error_rate_threshold=0.2, window_s=10,
                                min_calls=10, prefix=prefix, **FAST)
    for _ in range(5):
        cb.record_result(False)                           # 100% errors, but too few calls
    assert cb.state().state == "closed"
    for _ in range(4):
        cb.record_result(True)
    assert cb.state().state == "closed"                   # 9 calls
    cb.record_result(True)                                # 10 calls, 50% errors > 20%
    assert cb.state().state == "open"


def to_next_bucket(r: redis.Redis, bucket_s: float) -> None:
    """Sleep to just after the start of the next ``bucket_s`` bucket on the server clock,
    so the calls that follow fill whole buckets however slow the store (fakeredis, a loaded
    machine): a bucket holding only the first few calls would skew what it teaches."""
    sec, usec = r.time()
    time.sleep(bucket_s - (sec + usec / 1e6) % bucket_s + 0.002)


def test_adaptive_threshold_follows_the_baseline(r: redis.Redis, prefix: str) -> None:
    cb = AdaptiveCircuitBreaker(r, "api", error_rate_threshold=0.1, window_s=0.4, buckets=4,
                                min_calls=10, baseline_factor=2.0, baseline_alpha=0.2,
                                prefix=prefix, **FAST)

    def run(seconds: float, one_error_in: int) -> None:
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            cb.record_result((i + 1) % one_error_in != 0)  # never above 1/n errors
            i += 1

    to_next_bucket(r, 0.1)
    run(0.6, 12)     # normally ~8% errors: under the 10% floor, the baseline learns ~8%
    assert cb.state().state == "closed"
    assert 0.05 < float(r.hget(cb.key, "baseline")) < 0.12
    run(0.6, 8)      # 12.5%: above the floor, but not above 2x the backend's normal
    assert cb.state().state == "closed"
    run(0.3, 3)      # 33%: far above normal
    assert cb.state().state == "open"


@pytest.mark.parametrize("kw, field", [
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"open_timeout_s": -1}, "open_timeout_s"),
    ({"success_threshold": 3, "half_open_max_requests": 2}, "half_open_max_requests"),
    ({"failure_on": "oops"}, "failure_on"),
    ({"ignore": (KeyError, 3)}, "ignore"),
    ({"slow_call_s": float("nan")}, "slow_call_s"),
    ({"ttl_s": 1, "open_timeout_s": 30}, "ttl_s"),
    ({"on_store_error": "panic"}, "on_store_error"),
    ({"subscribe": "yes"}, "subscribe"),
])
def test_bad_configuration(r: redis.Redis, kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        CircuitBreaker(r, "x", **kw)


def test_bad_adaptive_configuration(r: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="error_rate_threshold"):
        AdaptiveCircuitBreaker(r, "x", error_rate_threshold=1.5)
    with pytest.raises(ConfigError, match="min_calls"):
        AdaptiveCircuitBreaker(r, "x", min_calls=0)


def test_record_with_something_else_than_an_attempt(r: redis.Redis, prefix: str) -> None:
    with pytest.raises(ConfigError, match="attempt"):
        breaker(r, prefix).record_success("permit")  # type: ignore[arg-type]


def test_noscript_and_wrong_type(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix)
    r.script_flush()
    cb.record_failure()
    assert cb.state().failures == 1
    r.delete(cb.key)
    r.set(cb.key, "x", ex=60)   # a hostile value; it expires like every key
    cb.record_failure()          # the breaker is reset, and the call counted on it
    assert r.type(cb.key) == b"hash" and cb.state().failures == 1
    assert 0 < r.pttl(cb.key) <= 86_400_000     # (more in tests/test_breaker_corrupt.py)


def test_events_reach_clients_that_decode_responses(server_url: str, prefix: str) -> None:
    a = breaker(redis.Redis.from_url(server_url), prefix, open_timeout_s=30)
    b = breaker(redis.Redis.from_url(server_url, decode_responses=True, protocol=3), prefix,
                open_timeout_s=30, max_staleness_s=0)
    assert b.can_attempt().allowed
    deadline = time.monotonic() + 10
    while b._subscribed_since() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The first answer came before the subscription was up: with max_staleness_s=0 only an
    # answer read under the subscription lets b answer from its view (else every poll below
    # may go to the store until the event arrives, on a slow machine).
    assert b.can_attempt().allowed        # one read now, under the subscription
    calls = b.store_stats.calls
    for _ in range(3):
        a.record_failure()
    while b.can_attempt().allowed:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert b.store_stats.calls == calls      # learned from the event, not a round trip


def test_adaptive_incident_bucket_does_not_become_the_baseline(r: redis.Redis,
                                                                prefix: str) -> None:
    cb = AdaptiveCircuitBreaker(r, "api", error_rate_threshold=0.2, window_s=1.0, buckets=4,
                                min_calls=10, prefix=prefix, **FAST)
    for _ in range(5):
        cb.record_result(False)       # all failing, in one bucket
    time.sleep(0.26)                  # that bucket completes: it is an incident, not normal
    to_next_bucket(r, 0.25)           # and the successes below share one bucket
    for _ in range(5):
        cb.record_result(True)
    assert cb.state().state == "open"
    assert r.hget(cb.key, "baseline") is None


def test_adaptive_throttling_sheds_a_fraction_instead_of_opening(r: redis.Redis,
                                                                 prefix: str) -> None:
    import random
    cb = AdaptiveCircuitBreaker(r, "api", window_s=60, min_calls=5, throttle_k=2.0,
                                rng=random.Random(3), prefix=prefix, **FAST)
    for i in range(40):                          # 75% errors: accepts 10 of 40 requests
        cb.record_result(i % 4 == 0)
    assert cb.state().state == "closed"          # throttling never opens
    assert cb.shed_probability() == pytest.approx((40 - 2 * 10) / 41)
    attempts = [cb.can_attempt() for _ in range(400)]
    shed = sum(a.state == "throttled" for a in attempts)
    assert 0.40 < shed / 400 < 0.58 and all(a.source == "throttle" for a in attempts
                                            if not a.allowed)
    cb.record_result(True)                       # carries the shed count to the window
    st = cb.state()
    assert r.hget(cb.key + ":window", next(
        k for k in r.hkeys(cb.key + ":window") if k.endswith(b":t"))) == str(shed).encode()
    assert st.state == "closed"


def test_healthy_backend_is_never_throttled(r: redis.Redis, prefix: str) -> None:
    cb = AdaptiveCircuitBreaker(r, "api", throttle_k=2.0, prefix=prefix, **FAST)
    for _ in range(30):
        cb.record_result(True)
    assert cb.shed_probability() == 0
    assert all(cb.can_attempt().allowed for _ in range(100))


def test_forced_state_never_expires_and_reset_restores_ttl(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, ttl_s=60)
    cb.force_open()
    assert r.pttl(cb.key) == -1                  # held until reset(), however long
    cb.reset()
    cb.record_failure()
    assert 0 < r.pttl(cb.key) <= 60_000
