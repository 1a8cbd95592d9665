"""A result without a permit counts only in the closed period that admitted its call.

A slow call admitted while closed can outlive a whole trip: the breaker opens, turns
half-open, a probe closes it, and only then does the slow call fail. Its result belongs
to the earlier closed period and must change nothing (the README's "Late results").
The caller's ``Attempt`` carries that period (``Attempt.period``: the server time of the
breaker's last move to closed, as the process's view knew it, without a round trip) and
``breaker.lua`` drops a result of any other closed period.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from distlb import AdaptiveCircuitBreaker, CircuitBreaker
from distlb._core.breaker import LocalBreaker
from tests import breaker_late_workers
from tests.clock import FakeClock
from tests.test_multiprocess import ctx
from tests.workers import make_client

pytestmark = pytest.mark.lua


def through_a_trip(cb: CircuitBreaker | AdaptiveCircuitBreaker, failures: int) -> None:
    """Trip ``cb`` (each failure of unknown period counts in the current one), wait out its
    open timeout, and close it with one probe success."""
    for _ in range(failures):
        cb.record_failure()
    assert cb.state().state == "open"
    deadline = time.monotonic() + 30
    while not (probe := cb.can_attempt()).allowed:
        assert time.monotonic() < deadline, "never turned half-open"
        time.sleep(0.02)
    assert probe.permit is not None
    cb.record_success(probe)
    assert cb.state().state == "closed"


STORE = dict(failure_threshold=2, open_timeout_s=0.2, success_threshold=1,
             half_open_max_requests=1, subscribe=False, max_staleness_s=0)


@pytest.mark.multiprocess
def test_a_late_failure_from_an_earlier_closed_period_changes_nothing(
        target: dict[str, Any]) -> None:
    """The newuser's case, with real processes: a worker's slow call in ``guard()`` is
    admitted from its local view (no round trip); this process trips the breaker and
    closes it again; then the slow call fails. Failures stay 0; the worker's next call,
    admitted in the new period, counts."""
    prefix = f"late{uuid.uuid4().hex[:8]}"
    other = CircuitBreaker(make_client(target), "backend", prefix=prefix, **STORE)
    go, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=breaker_late_workers.slow_call_in_guard,
                       args=(target, prefix, dict(STORE, max_staleness_s=5.0), go, out))
    proc.start()
    try:
        admitted = out.get(timeout=60)
        assert admitted["admitted"] == "cache"     # the closed path: no round trip
        assert admitted["period"] is not None       # ... and still knows its period
        through_a_trip(other, 2)
        assert other.state().failures == 0
        go.set()
        late = out.get(timeout=60)
        assert late == {"late": ("closed", 0)}       # before the fix: ("closed", 1)
        fresh = out.get(timeout=60)["fresh"]
        assert fresh[:2] == ("closed", 1)            # a call of the new period counts
        assert fresh[2] != admitted["period"]
    finally:
        go.set()
        proc.join(30)
    assert proc.exitcode == 0
    other.close()


def test_a_late_failure_cannot_trip_an_adaptive_breaker_closed_since(
        r: redis.Redis, prefix: str) -> None:
    """The adaptive window still holds the incident's failures after the breaker closed:
    a late failure of the earlier period would re-trip it at once if it counted."""
    cfg: dict[str, Any] = dict(error_rate_threshold=0.5, min_calls=2, window_s=60, buckets=2,
                               open_timeout_s=0.2, success_threshold=1,
                               half_open_max_requests=1, prefix=prefix, subscribe=False,
                               max_staleness_s=0)
    slow = AdaptiveCircuitBreaker(r, "api", **cfg)
    early = slow.can_attempt()
    assert early.allowed and early.period is not None
    through_a_trip(AdaptiveCircuitBreaker(r, "api", **cfg), 2)
    slow.record_result(False, early)
    assert slow.state().state == "closed"
    slow.record_result(False, slow.can_attempt())  # this period's failure: trips it
    assert slow.state().state == "open"


def test_reset_starts_a_new_closed_period(r: redis.Redis, prefix: str) -> None:
    """``reset()`` clears the counts: a call admitted before it does not count after it."""
    cb = CircuitBreaker(r, "node", prefix=prefix, **dict(STORE, failure_threshold=1))
    early = cb.can_attempt()
    cb.reset()
    cb.record_failure(early)
    assert (cb.state().state, cb.state().failures) == ("closed", 0)
    cb.record_failure(cb.can_attempt())
    assert cb.state().state == "open"


def test_an_expired_breaker_counts_a_result_of_any_period(r: redis.Redis,
                                                          prefix: str) -> None:
    """A missing breaker (expired after ``ttl_s`` idle) has no period yet: a process whose
    view still holds the old one (known closed, no round trip) is counted, not ignored
    forever."""
    cb = CircuitBreaker(r, "node", prefix=prefix,
                        **dict(STORE, max_staleness_s=60.0, failure_threshold=3))
    through_a_trip(CircuitBreaker(r, "node", prefix=prefix, **STORE), 2)
    cb.can_attempt()                                   # the view: closed, the new period
    cached = cb.can_attempt()
    assert cached.source == "cache" and cached.period and cached.period > 0
    r.delete(*cb.keys)                                 # as if expired
    cb.record_failure(cached)
    assert cb.state().failures == 1
    cb.record_failure(cb.can_attempt())                # the view follows the new period
    assert cb.state().failures == 2


def test_the_view_learns_each_new_period_from_events(r: redis.Redis, prefix: str) -> None:
    """A subscribed process learns the period another process's close started from the
    event, so its next fast attempt carries the period the store now has."""
    watcher = CircuitBreaker(r, "node", prefix=prefix, failure_threshold=2,
                             max_staleness_s=0, subscribe=True)
    first = watcher.can_attempt()
    deadline = time.monotonic() + 30
    while watcher.can_attempt().source != "cache":       # fresh by its subscription
        assert time.monotonic() < deadline, "the subscription never came up"
        time.sleep(0.02)
    through_a_trip(CircuitBreaker(r, "node", prefix=prefix, **STORE), 2)
    now = int(r.hget(watcher.key, "closed_us") or 0)
    assert now > 0 and now != first.period
    while not ((a := watcher.can_attempt()).source == "cache" and a.period == now):
        assert time.monotonic() < deadline, "the view never learned the new period"
        time.sleep(0.02)
    watcher.record_failure(first)                        # the old period: nothing
    assert watcher.state().failures == 0
    watcher.close()


def test_the_local_twin_drops_a_late_result_of_an_earlier_closed_period() -> None:
    clock = FakeClock()
    twin = LocalBreaker(failure_threshold=1, open_timeout_s=1.0, success_threshold=1,
                        clock=clock)
    early = twin.attempt()
    assert early.period == 0
    twin.record(True)                                    # trips it (period unknown)
    clock.now += 2
    probe = twin.attempt()
    twin.record(False, probe.permit)                     # closes it: a new period
    assert twin.state == "closed"
    twin.record(True, None, early.period)                # late: admitted before the trip
    assert (twin.state, twin.failures) == ("closed", 0)
    now = twin.attempt()
    assert now.period == 1
    twin.record(True, None, now.period)
    assert twin.state == "open"


def test_a_pool_call_admitted_before_a_trip_fails_late_without_reopening(
        r: redis.Redis, prefix: str) -> None:
    """Through ``LoadBalancer.execute``: the backend's breaker admitted the call (its
    ``Attempt`` held by the lease); meanwhile the breaker trips and closes again; the
    call's failure then changes nothing (with ``failure_threshold=1`` it would reopen)."""
    import threading

    from distlb import Backend, BreakerSettings, LoadBalancer

    settings = dict(failure_threshold=1, open_timeout_s=0.2, success_threshold=1,
                    half_open_max_requests=1)
    lb = LoadBalancer(r, "pool", prefix=prefix, subscribe=False,
                      breaker=BreakerSettings(**settings, subscribe=False, max_staleness_s=5))
    lb.add_backend(Backend("a", "10.0.0.1:80"))
    cb = lb.breaker_for("a")
    assert cb is not None
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(backend: Any) -> None:
        started.set()
        release.wait(60)
        raise ConnectionError("the slow call finally failed")

    def run() -> None:
        try:
            lb.execute(slow)
        except BaseException as exc:      # the call's own error, checked below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert started.wait(60)
        other = CircuitBreaker(r, cb.name, prefix=prefix, **STORE | settings)
        through_a_trip(other, 1)
    finally:
        release.set()
        t.join(60)
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)
    st = other.state()
    assert (st.state, st.failures) == ("closed", 0)     # before the fix: open
    lb.close()
    other.close()
