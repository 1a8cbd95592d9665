"""Late results: a result counts only in the period of the breaker that admitted its call.

A call admitted while closed may finish after the breaker tripped (and after its open
timeout passed), and a probe of one half-open period may answer in the next one, or after
the breaker closed. pybreaker and Resilience4j mean such results not to count as probe
outcomes; here the script checks it: a probe result counts only while its permit is held
in the current half-open period, a result without a permit only while closed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from distlb import CircuitBreaker
from distlb._core.breaker import LocalBreaker
from tests.clock import FakeClock

pytestmark = pytest.mark.lua


def breaker(r: Any, prefix: str, **kw: Any) -> CircuitBreaker:
    cfg: dict[str, Any] = dict(failure_threshold=2, success_threshold=1,
                               half_open_max_requests=2, open_timeout_s=0.2,
                               probe_lease_s=30, prefix=prefix, subscribe=False,
                               max_staleness_s=0)
    cfg.update(kw)
    return CircuitBreaker(r, "node", **cfg)


def trip(cb: CircuitBreaker) -> None:
    for _ in range(cb.failure_threshold):
        cb.record_failure()
    assert cb.state().state == "open"


def wait_open_timeout_passed(r: redis.Redis, cb: CircuitBreaker) -> None:
    """Until the SERVER clock passed the open timeout, without calling the breaker (any
    call would turn it half-open itself): the next call is the first one after it."""
    opened = int(r.hget(cb.key, "opened_us") or 0)
    assert opened > 0
    due = opened + int(cb.open_timeout_s * 1e6)
    deadline = time.monotonic() + 30
    while True:
        sec, usec = r.time()
        if sec * 1_000_000 + usec > due:
            return
        assert time.monotonic() < deadline, "server clock never passed the open timeout"
        time.sleep(0.01)


def test_late_failure_after_the_open_timeout_does_not_reopen(r: redis.Redis,
                                                             prefix: str) -> None:
    cb = breaker(r, prefix)
    trip(cb)
    opened = int(r.hget(cb.key, "opened_us") or 0)
    wait_open_timeout_passed(r, cb)
    cb.record_failure()          # a call admitted before the trip, failing late
    st = cb.state()
    # Half-open (the timeout passed), not open again with the timeout restarted.
    assert st.state == "half_open", st
    assert int(r.hget(cb.key, "opened_us") or 0) == opened
    probe = cb.can_attempt()
    assert probe.allowed and probe.permit


def test_late_success_without_a_permit_is_not_a_probe_success(r: redis.Redis,
                                                              prefix: str) -> None:
    cb = breaker(r, prefix)
    trip(cb)
    wait_open_timeout_passed(r, cb)
    cb.record_success()          # admitted before the trip: says nothing about now
    assert cb.state().state == "half_open"
    probe = cb.can_attempt()
    cb.record_success(probe)     # a real probe closes it
    assert cb.state().state == "closed"


def test_a_late_result_while_open_changes_nothing(r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, open_timeout_s=60)
    trip(cb)
    before = r.hgetall(cb.key)
    cb.record_success()
    cb.record_failure()
    assert r.hgetall(cb.key) == before


def test_a_probe_of_an_earlier_half_open_period_cannot_close_the_breaker(
        r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix)
    trip(cb)
    wait_open_timeout_passed(r, cb)
    p1, p2 = cb.can_attempt(), cb.can_attempt()
    assert p1.permit and p2.permit
    cb.record_failure(p2)                          # half-open -> open
    assert cb.state().state == "open"
    wait_open_timeout_passed(r, cb)
    cb.record_success(p1)                          # p1 belongs to the previous period
    st = cb.state()
    assert st.state == "half_open" and st.successes == 0, st
    p3 = cb.can_attempt()
    assert p3.allowed and p3.permit
    cb.record_failure(p1)                          # nor can it reopen it
    assert cb.state().state == "half_open"
    cb.record_success(p3)
    assert cb.state().state == "closed"


def test_a_probe_answering_after_the_breaker_closed_is_not_counted(
        r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, failure_threshold=1)
    trip(cb)
    wait_open_timeout_passed(r, cb)
    p1, p2 = cb.can_attempt(), cb.can_attempt()
    cb.record_success(p1)                          # half-open -> closed
    assert cb.state().state == "closed"
    cb.record_failure(p2)                          # a probe of the closed period
    st = cb.state()
    assert st.state == "closed" and st.failures == 0, st


def test_a_late_success_cannot_close_a_breaker_that_opened_meanwhile(
        r: redis.Redis, prefix: str) -> None:
    cb = breaker(r, prefix, open_timeout_s=60)
    early = cb.can_attempt()                       # admitted while closed
    assert early.allowed and early.permit is None
    trip(cb)
    cb.record_success(early)
    assert cb.state().state == "open"


def test_the_local_twin_counts_results_in_their_own_period() -> None:
    clock = FakeClock()
    twin = LocalBreaker(failure_threshold=1, open_timeout_s=1.0, success_threshold=1,
                        clock=clock)
    early = twin.attempt()
    assert early.allowed and early.permit is None
    twin.record(True)                              # closed -> open
    clock.now += 2                                 # past the open timeout
    twin.record(True, early.permit)                # late, admitted while closed
    assert twin.attempt().permit is not None       # half-open, probing, not reopened
    stale = twin.attempt()
    assert not stale.allowed                       # one probe at a time
    clock.now += 0.1
    twin.record(False)                             # a late success without a permit
    assert twin.state == "half_open"
    first = twin.snapshot("x")
    assert first.probes_in_flight == 1
    # The probe fails; the next period's probe is a different permit.
    probe_permit = twin.probe
    twin.record(True, probe_permit)
    assert twin.state == "open"
    clock.now += 2
    fresh = twin.attempt()
    assert fresh.permit and fresh.permit != probe_permit
    twin.record(False, probe_permit)               # the old probe, answering late
    assert twin.state == "half_open"
    twin.record(False, fresh.permit)
    assert twin.state == "closed"


def test_pool_record_result_after_select_backend_still_probes_a_half_open_breaker(
        r: redis.Redis, prefix: str) -> None:
    """``select_backend`` takes no permit: ``record_result`` asks for one, so its results
    count as (rationed) probes while half-open and the breaker can close or reopen."""
    from distlb import Backend, BreakerSettings, LoadBalancer

    lb = LoadBalancer(r, "pool", prefix=prefix,
                      breaker=BreakerSettings(failure_threshold=1, open_timeout_s=0.2,
                                              success_threshold=1, half_open_max_requests=1,
                                              subscribe=False, max_staleness_s=0))
    lb.add_backend(Backend("a", "10.0.0.1:80"))
    cb = lb.breaker_for("a")
    assert cb is not None
    lb.record_result("a", 0.01, False)                     # trips it
    assert cb.state().state == "open"
    wait_open_timeout_passed(r, cb)
    lb.record_result("a", 0.01, False)                     # a probe's failure: reopens
    assert cb.state().state == "open"
    wait_open_timeout_passed(r, cb)
    assert lb.select_backend().id == "a"
    lb.record_result("a", 0.01, True)                      # a probe's success: closes
    assert cb.state().state == "closed"
    lb.close()
