"""Prometheus metrics: scrape the exposition format and find the documented series."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import distlb.metrics
from distlb import (
    Backend,
    CircuitBreaker,
    LoadBalancer,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
    TokenBucket,
)

pytestmark = pytest.mark.lua


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    distlb.metrics.enable(reg)
    yield reg
    distlb.metrics.disable()


def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_documented_series_appear_with_values(registry: CollectorRegistry, r: redis.Redis,
                                              prefix: str) -> None:
    tb = TokenBucket(r, "api", rate_per_s=0.001, burst=2, prefix=prefix)
    for _ in range(3):
        tb.try_acquire()
    cb = CircuitBreaker(r, "node1", failure_threshold=1, prefix=prefix)
    cb.can_attempt()
    cb.record_failure()
    budget = RetryBudget(r, "api", ratio=0, min_retries_per_s=0.1, window_s=10, prefix=prefix)
    policy = RetryPolicy.fixed(0, max_attempts=3).with_budget(budget)

    def dead() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises((ConnectionError, RetryBudgetExhausted)):
            policy.execute(dead)
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    lb.add_backend(Backend("n1", "10.0.0.1:80"))
    lb.execute(lambda b: b.id)
    down = TokenBucket(redis.Redis(port=1, socket_connect_timeout=0.1), "api", rate_per_s=1,
                       burst=1, prefix=prefix, on_store_error="fail_closed")
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    down.client.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
    down.try_acquire()

    got = samples(registry)
    assert got[("distlb_decisions_total", (("limiter", "bucket"), ("outcome", "allowed"),
                                           ("reason", "")))] == 2
    assert got[("distlb_decisions_total", (("limiter", "bucket"), ("outcome", "denied"),
                                           ("reason", "bucket")))] == 1
    assert got[("distlb_breaker_transitions_total", (("breaker", "node1"),
                                                     ("from_state", "closed"),
                                                     ("to_state", "open")))] == 1
    assert got[("distlb_breaker_state", (("breaker", "node1"),))] == 2
    assert got[("distlb_retries_total", (("outcome", "retried"),))] == 1
    assert got[("distlb_retries_total", (("outcome", "budget_denied"),))] >= 1
    assert got[("distlb_selections_total", (("backend", ""), ("pool", "api")))] == 1
    assert got[("distlb_store_errors_total", (("primitive", "token bucket"),))] == 1
    assert got[("distlb_fallbacks_total", (("policy", "fail_closed"),
                                           ("primitive", "token bucket")))] == 1


def test_opentelemetry_instruments_alongside_prometheus(registry: CollectorRegistry,
                                                        r: redis.Redis, prefix: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    reader = InMemoryMetricReader()
    distlb.metrics.enable_opentelemetry(MeterProvider(metric_readers=[reader]))
    tb = TokenBucket(r, "api", rate_per_s=0.001, burst=1, prefix=prefix)
    tb.try_acquire()
    tb.try_acquire()
    cb = CircuitBreaker(r, "node9", failure_threshold=1, prefix=prefix)
    cb.can_attempt()
    cb.record_failure()
    points: dict[str, list[Any]] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points[metric.name] = list(metric.data.data_points)
    decisions = {(p.attributes["outcome"], p.attributes["reason"]): p.value
                 for p in points["distlb.decisions"]}
    assert decisions == {("allowed", ""): 1, ("denied", "bucket"): 1}
    assert [p.value for p in points["distlb.breaker.state"]
            if p.attributes["breaker"] == "node9"] == [2]
    # Prometheus, enabled first, still counts too.
    assert samples(registry)[("distlb_decisions_total", (("limiter", "bucket"),
                                                         ("outcome", "allowed"),
                                                         ("reason", "")))] == 1


def otel_points(reader: Any) -> dict[str, list[Any]]:
    points: dict[str, list[Any]] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points[metric.name] = list(metric.data.data_points)
    return points


def test_a_thousand_denied_clients_make_a_bounded_number_of_series(r: redis.Redis,
                                                                    prefix: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from distlb import Limit, TrafficShaper
    reg = CollectorRegistry()
    reader = InMemoryMetricReader()
    distlb.metrics.enable(reg)
    distlb.metrics.enable_opentelemetry(MeterProvider(metric_readers=[reader]))
    try:
        shaper = TrafficShaper(r, "api", client_limit=Limit(0.001, 1),
                               client_bandwidth=Limit(0.001, 10), prefix=prefix)
        client_ids = [f"user-{i}" for i in range(1000)]
        for cid in client_ids:
            shaper.try_acquire(cid)                           # allowed: the burst
            assert not shaper.try_acquire(cid).allowed        # denied: client limit
        lb = LoadBalancer(r, "pool", prefix=prefix)
        for i in range(50):
            lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80"))
        for _ in range(200):
            lb.execute(lambda b: None)
        for i in range(50):                                   # every backend's breaker trips
            cb = lb.breaker_for(f"n{i}")
            assert cb is not None
            for _ in range(cb.failure_threshold):  # type: ignore[attr-defined]
                cb.record_failure()  # type: ignore[attr-defined]
        got = samples(reg)
        decisions = {k for k in got if k[0] == "distlb_decisions_total"}
        assert decisions == {
            ("distlb_decisions_total", (("limiter", "bucket"), ("outcome", "allowed"),
                                        ("reason", ""))),
            ("distlb_decisions_total", (("limiter", "bucket"), ("outcome", "denied"),
                                        ("reason", "client")))}
        assert got[("distlb_decisions_total", (("limiter", "bucket"), ("outcome", "denied"),
                                               ("reason", "client")))] == 1000
        assert {k for k in got if k[0] == "distlb_selections_total"} == \
            {("distlb_selections_total", (("backend", ""), ("pool", "pool")))}
        assert {k for k in got if k[0] == "distlb_breaker_state"} == \
            {("distlb_breaker_state", (("breaker", "pool/*"),))}
        assert got[("distlb_breaker_state", (("breaker", "pool/*"),))] == 2
        assert got[("distlb_breaker_transitions_total", (("breaker", "pool/*"),
                                                         ("from_state", "closed"),
                                                         ("to_state", "open")))] == 50
        assert len(got) < 40, sorted(got)
        points = otel_points(reader)
        assert {p.attributes["reason"] for p in points["distlb.decisions"]} == {"", "client"}
        assert {p.attributes["backend"] for p in points["distlb.selections"]} == {""}
        assert [p.attributes["breaker"] for p in points["distlb.breaker.state"]] == ["pool/*"]
    finally:
        distlb.metrics.disable()


def test_id_labels_opt_in(r: redis.Redis, prefix: str) -> None:
    from distlb import Limit, TrafficShaper
    from distlb.errors import ConfigError
    with pytest.raises(ConfigError, match="id_labels"):
        distlb.metrics.enable(CollectorRegistry(), id_labels=1)  # type: ignore[arg-type]
    reg = CollectorRegistry()
    distlb.metrics.enable(reg, id_labels=True)
    try:
        shaper = TrafficShaper(r, "api", client_limit=Limit(0.001, 1), prefix=prefix)
        shaper.try_acquire("alice")
        shaper.try_acquire("alice")
        lb = LoadBalancer(r, "pool", prefix=prefix)
        lb.add_backend(Backend("n1", "10.0.0.1:80"))
        lb.execute(lambda b: None)
        cb = lb.breaker_for("n1")
        assert cb is not None
        for _ in range(cb.failure_threshold):  # type: ignore[attr-defined]
            cb.record_failure()  # type: ignore[attr-defined]
        got = samples(reg)
        assert got[("distlb_decisions_total", (("limiter", "bucket"), ("outcome", "denied"),
                                               ("reason", "client:alice")))] == 1
        assert got[("distlb_selections_total", (("backend", "n1"), ("pool", "pool")))] == 1
        assert got[("distlb_breaker_state", (("breaker", "pool/n1"),))] == 2
    finally:
        distlb.metrics.disable()
