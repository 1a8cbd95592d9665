"""Breaker transitions reported exactly once, exact event versions, half-open timing on the
server clock: single process and real processes with skewed, fast local clocks."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

import distlb.metrics
from distlb import AdaptiveCircuitBreaker, CircuitBreaker, Transition
from tests.test_metrics import samples
from tests.test_multiprocess import ctx

pytestmark = pytest.mark.lua


def wait_for(cond: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``cond`` until it is truthy; a generous deadline, never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or cond}"
        time.sleep(0.005)
    return value


def collect(cb: Any) -> list[Transition]:
    seen: list[Transition] = []
    cb.add_listener(seen.append)
    return seen


# -- item 8: a process's first contact that trips the breaker is reported -----------------------

def test_adaptive_first_contact_trip_is_reported_with_metric_and_log(
        r: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    reg = CollectorRegistry()
    distlb.metrics.enable(reg)
    try:
        cb = AdaptiveCircuitBreaker(r, "first", min_calls=1, error_rate_threshold=0.1,
                                    prefix=prefix, subscribe=False)
        seen = collect(cb)
        with caplog.at_level(logging.INFO, logger="distlb"):
            cb.record_result(False)          # the process's first contact trips it
        assert cb.state().state == "open"
        assert [(t.from_state, t.to_state, t.origin) for t in seen] == \
            [("closed", "open", "call")]
        assert seen[0].version == int(r.hget(f"{prefix}:{{cb:first}}", "version"))
        got = samples(reg)
        assert got[("distlb_breaker_transitions_total", (("breaker", "first"),
                                                         ("from_state", "closed"),
                                                         ("to_state", "open")))] == 1
        assert got[("distlb_breaker_state", (("breaker", "first"),))] == 2
        assert any("'first' closed -> open" in rec.getMessage() for rec in caplog.records)
    finally:
        distlb.metrics.disable()


def test_count_breaker_first_contact_trip_and_forced_states_are_reported(
        r: redis.Redis, prefix: str) -> None:
    cb = CircuitBreaker(r, "first", failure_threshold=1, prefix=prefix, subscribe=False)
    seen = collect(cb)
    cb.record_failure()
    other = CircuitBreaker(r, "first", failure_threshold=1, prefix=prefix, subscribe=False)
    other_seen = collect(other)
    other.reset()                            # first contact of `other`: open -> closed
    other.force_open()
    other.force_closed()
    assert [(t.from_state, t.to_state) for t in seen] == [("closed", "open")]
    assert [(t.from_state, t.to_state) for t in other_seen] == \
        [("open", "closed"), ("closed", "open"), ("open", "closed")]


def test_transition_seen_by_reply_and_event_is_reported_once(server_url: str,
                                                             prefix: str) -> None:
    """A process subscribed to events hears its own trip twice (reply and event): once."""
    cb = CircuitBreaker(redis.Redis.from_url(server_url), "once", failure_threshold=1,
                        open_timeout_s=0.2, success_threshold=1, prefix=prefix)
    seen = collect(cb)
    cb.can_attempt()
    wait_for(lambda: cb._subscribed_since() is not None, what="subscription")
    cb.record_failure()
    assert cb._bus is not None
    wait_for(lambda: cb._bus is not None and cb._bus.events >= 1, what="the trip event")
    attempt = wait_for(lambda: (a := cb.can_attempt()).allowed and a, what="a probe")
    cb.record_success(attempt)
    wait_for(lambda: cb._bus is not None and cb._bus.events >= 3, what="all events")
    assert [(t.from_state, t.to_state) for t in seen] == \
        [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_local_twin_transitions_are_reported(prefix: str) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.1)
    cb = CircuitBreaker(dead, "twin", failure_threshold=2, open_timeout_s=0.05,
                        success_threshold=1, on_store_error="local", prefix=prefix,
                        subscribe=False)
    seen = collect(cb)
    cb.record_failure()
    cb.record_failure()
    attempt = wait_for(lambda: (a := cb.can_attempt()).allowed and a, what="a local probe")
    cb.record_success(attempt)
    assert [(t.from_state, t.to_state, t.origin) for t in seen] == [
        ("closed", "open", "local"), ("open", "half_open", "local"),
        ("half_open", "closed", "local")]


def trip_on_first_contact(url: str, prefix: str, barrier: Any, out: Any) -> None:
    """One shared adaptive breaker, min_calls = processes: the last first call trips it."""
    cb = AdaptiveCircuitBreaker(redis.Redis.from_url(url), "fleet", min_calls=barrier.parties,
                                error_rate_threshold=0.1, prefix=prefix, subscribe=False)
    seen = collect(cb)
    barrier.wait()
    cb.record_result(False)
    barrier.wait()
    cb.state()
    out.put([(t.from_state, t.to_state, t.version, t.origin) for t in seen])


@pytest.mark.multiprocess
def test_every_process_reports_the_fleet_trip_once(server_url: str, r: redis.Redis,
                                                   prefix: str) -> None:
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=trip_on_first_contact, args=(server_url, prefix, barrier, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    version = int(r.hget(f"{prefix}:{{cb:fleet}}", "version"))
    assert all([(a, b, v) for a, b, v, _ in rep] == [("closed", "open", version)]
               for rep in reports), reports
    # The process whose first call tripped it reports it from its reply.
    assert sum(rep[0][3] == "call" for rep in reports) == n


# -- item 9: event versions are exact ---------------------------------------------------------

def test_event_versions_are_exact(server_url: str, r: redis.Redis, prefix: str) -> None:
    ps = r.pubsub()
    ps.subscribe(f"{prefix}:events")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    cb = CircuitBreaker(r, "exact", failure_threshold=1, prefix=prefix, subscribe=False)
    key = f"{prefix}:{{cb:exact}}"
    for _ in range(5):
        cb.record_failure()
        event = json.loads(wait_for(lambda: ps.get_message(timeout=1), what="event")["data"])
        assert int(event["version"]) == int(r.hget(key, "version"))
        cb.reset()
        event = json.loads(wait_for(lambda: ps.get_message(timeout=1), what="event")["data"])
        assert int(event["version"]) == int(r.hget(key, "version"))
    ps.close()


def test_event_then_newer_reply_is_not_undone_by_rounding(r: redis.Redis, prefix: str) -> None:
    """The trip's event is read before the reset's reply (the usual order). The two changes
    are 1 us apart: an event version rounded to 100 us would look newer than the reply."""
    key = f"{prefix}:{{cb:order}}"
    # Versions are max(now, last + 1): start from a known value near a rounding edge.
    r.hset(key, mapping={"state": "closed", "version": "1999999999999950"})
    r.pexpire(key, 60_000)
    ps = r.pubsub()
    ps.subscribe(f"{prefix}:events")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    writer = CircuitBreaker(r, "order", failure_threshold=1, prefix=prefix, subscribe=False)
    writer.record_failure()                                   # versions ...951, ...952
    trip = wait_for(lambda: ps.get_message(timeout=1), what="trip event")["data"]
    ps.close()
    view = CircuitBreaker(r, "order", failure_threshold=1, prefix=prefix, subscribe=False)
    view._on_event(json.loads(trip))                  # as the subscriber thread delivers it
    assert view._view.state == "open"
    view.reset()                                                      # version ...953
    assert int(r.hget(key, "version")) == 1999999999999953
    assert view._view.state == "closed"
    assert view.can_attempt().allowed


# -- item 20: half-open timing follows the server clock in every process -----------------------

def skewed_clock(offset_s: float, rate: float) -> Callable[[], float]:
    return lambda: offset_s + rate * time.monotonic()


def watch_half_open(url: str, prefix: str, offset_s: float, rate: float, cfg: dict[str, Any],
                    barrier: Any, out: Any) -> None:
    """Join the bus, wait for the trip, then poll until this process sees it half-open.

    Times are real CLOCK_MONOTONIC readings (shared by the processes of one host); the
    breaker itself only ever sees the skewed, fast clock it was given."""
    client = redis.Redis.from_url(url)
    clock = skewed_clock(offset_s, rate)
    # Another object on the same client joins the bus first, with the real clock: the
    # breaker must not compare its own clock with the bus's.
    other = CircuitBreaker(client, "other", prefix=prefix)
    other.can_attempt()
    cb = CircuitBreaker(client, "shared", prefix=prefix, clock=clock, **cfg)
    times: dict[str, float] = {}
    cb.add_listener(lambda t: times.setdefault(t.to_state, time.monotonic()))
    cb.can_attempt()
    wait_for(lambda: cb._subscribed_since() is not None, what="subscription")
    barrier.wait()
    wait_for(lambda: "open" in times, what="the trip")
    while "half_open" not in times:
        if cb.can_attempt().state != "open":
            times.setdefault("half_open", time.monotonic())
        time.sleep(0.002)
    out.put(times)


@pytest.mark.multiprocess
def test_skewed_fast_clocks_agree_on_half_open(server_url: str, prefix: str) -> None:
    timeout = 1.5
    cfg = dict(failure_threshold=1, open_timeout_s=timeout, success_threshold=5,
               half_open_max_requests=5)
    clocks = [(3600.0, 1.0), (-3600.0, 1.0), (0.0, 1.5), (-3600.0, 1.5)]
    barrier, out = ctx.Barrier(len(clocks) + 1), ctx.Queue()
    procs = [ctx.Process(target=watch_half_open,
                         args=(server_url, prefix, off, rate, cfg, barrier, out))
             for off, rate in clocks]
    for p in procs:
        p.start()
    barrier.wait(timeout=60)
    cb = CircuitBreaker(redis.Redis.from_url(server_url), "shared", prefix=prefix,
                        subscribe=False, **cfg)
    before = time.monotonic()
    cb.record_failure()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    half_open = sorted(t["half_open"] for t in results)
    print(f"half-open seen {[round(t - before, 4) for t in half_open]} s after the trip")
    assert half_open[0] >= before + timeout - 0.01        # nobody early: the server decides
    # Everyone within a tight bound of each other (was: one process about 1 s late).
    assert half_open[-1] - half_open[0] < 0.25


@pytest.mark.parametrize("offset_s,rate", [(-3600.0, 1.0), (0.0, 1.5), (3600.0, 0.5)])
def test_freshness_never_compares_the_bus_clock_with_a_skewed_breaker_clock(
        server_url: str, prefix: str, offset_s: float, rate: float) -> None:
    """The bus of a client may be started by an object with another clock. A breaker whose
    clock is skewed must still rely on the healthy subscription (no round trip), as one
    with the real clock does, instead of falling back to the staleness bound."""
    client = redis.Redis.from_url(server_url)
    other = CircuitBreaker(client, "other", prefix=prefix)          # real clock: starts the bus
    other.can_attempt()
    wait_for(lambda: other._subscribed_since() is not None, what="subscription")
    cb = CircuitBreaker(client, "skewed", prefix=prefix, max_staleness_s=0.0,
                        clock=skewed_clock(offset_s, rate))
    assert cb.can_attempt().source == "store"
    assert cb.can_attempt().source == "cache"   # subscribed before that reply: events suffice
