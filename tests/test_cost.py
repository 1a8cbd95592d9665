"""Cost-aware routing: the rule, exactly; costs and saturation through a real shared registry."""

from __future__ import annotations

import random
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest
import redis

from distlb import Backend, ConfigError, LoadBalancer
from distlb.strategies import Context, CostAwareBalancer, NoBackendAvailable


def priced(*specs: tuple[str, float, float | None], **changes: Any) -> list[Backend]:
    """Backends from (id, cost, capacity) triples."""
    out = []
    for bid, cost, cap in specs:
        meta: dict[str, Any] = {"cost": cost}
        if cap is not None:
            meta["capacity"] = cap
        out.append(Backend(bid, metadata=meta).with_(**changes.get(bid, {})))
    return out


def test_the_cheapest_backend_with_room_wins() -> None:
    s = CostAwareBalancer(rng=random.Random(1))
    backends = priced(("dear", 5, 10), ("cheap", 1, 10), ("mid", 2, 10))
    assert {s.select(backends).id for _ in range(50)} == {"cheap"}


def test_traffic_spills_to_the_next_price_as_the_cheap_ones_fill() -> None:
    s = CostAwareBalancer(rng=random.Random(1))
    full = {"active_connections": 10}
    # cheap1 full, cheap2 has room: still the cheap tier.
    assert s.select(priced(("cheap1", 1, 10), ("cheap2", 1, 10), ("mid", 2, 10),
                           cheap1=full)).id == "cheap2"
    # The whole cheap tier full: the next price.
    assert s.select(priced(("cheap1", 1, 10), ("cheap2", 1, 10), ("mid", 2, 10),
                           cheap1=full, cheap2=full)).id == "mid"
    # Everything full: the least loaded relative to capacity, whatever its price.
    over = priced(("cheap", 1, 10), ("dear", 5, 40),
                  cheap={"active_connections": 20}, dear={"active_connections": 50})
    assert s.select(over).id == "dear"        # 51/40 < 21/10


def test_within_a_price_the_least_loaded_wins() -> None:
    s = CostAwareBalancer(rng=random.Random(1))
    backends = priced(("a", 1, 10), ("b", 1, 40), ("c", 1, 10),
                      a={"active_connections": 3}, b={"active_connections": 8},
                      c={"active_connections": 5})
    assert s.select(backends).id == "b"       # 9/40 < 4/10 < 6/10
    # Ties at random, not always the first.
    tied = priced(("a", 1, 10), ("b", 1, 10))
    assert {s.select(tied).id for _ in range(100)} == {"a", "b"}


def test_a_backend_missing_the_objective_loses_its_traffic_but_is_still_probed() -> None:
    s = CostAwareBalancer(max_latency_ms=100, max_error_rate=0.05, probe_share=0.02,
                          rng=random.Random(4))
    slow = priced(("cheap", 1, 10), ("dear", 5, 10), cheap={"latency_ms": 250.0})
    counts = Counter(s.select(slow).id for _ in range(20_000))
    assert 0.01 < counts["cheap"] / 20_000 < 0.03     # probes only, about 2%
    failing = priced(("cheap", 1, 10), ("dear", 5, 10), cheap={"error_rate": 0.2})
    assert Counter(s.select(failing).id for _ in range(2000))["dear"] > 1900
    # It recovers: its averages meet the objective again, it takes all the traffic back.
    assert {s.select(priced(("cheap", 1, 10), ("dear", 5, 10),
                            cheap={"latency_ms": 80.0})).id for _ in range(200)} == {"cheap"}
    # A backend not measured yet (latency 0) meets the objective.
    assert s.select(priced(("new", 1, 10), ("dear", 5, 10))).id == "new"


def test_degraded_backends_beat_full_ones_and_never_unhealthy_ones() -> None:
    s = CostAwareBalancer(max_latency_ms=100, rng=random.Random(1))
    backends = priced(("ok", 1, 10), ("slow", 2, 10), ("down", 0, 10),
                      ok={"active_connections": 10}, slow={"latency_ms": 500.0},
                      down={"healthy": False})
    assert {s.select(backends).id for _ in range(50)} == {"slow"}
    with pytest.raises(NoBackendAvailable):
        s.select(backends, Context().excluding("ok", "slow"))


def test_defaults_and_unusable_metadata() -> None:
    s = CostAwareBalancer(default_cost=3.0, capacity=5, rng=random.Random(1))
    backends = [Backend("plain"), Backend("typo", metadata={"cost": "1", "capacity": -1}),
                Backend("cheap", metadata={"cost": 2})]
    assert s.cost_of(backends[0]) == 3.0 and s.cost_of(backends[1]) == 3.0
    assert s.capacity_of(backends[1]) == 5
    assert s.select(backends).id == "cheap"
    # capacity= applies to backends that declare none: "cheap" is full at 5.
    full = [b.with_(active_connections=5) if b.id == "cheap" else b for b in backends]
    assert s.select(full).id in {"plain", "typo"}
    assert CostAwareBalancer().capacity_of(Backend("x")) is None
    CostAwareBalancer.check_metadata({"cost": 0, "capacity": 2.5, "zone": "a"})
    for bad in ({"cost": -1}, {"cost": "1"}, {"capacity": 0}, {"capacity": float("inf")},
                {"cost": True}):
        with pytest.raises(ConfigError):
            CostAwareBalancer.check_metadata(bad)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_latency_ms": 0}, "max_latency_ms"), ({"max_error_rate": 1.5}, "max_error_rate"),
    ({"capacity": -1}, "capacity"), ({"default_cost": -1}, "default_cost"),
    ({"probe_share": 0.9}, "probe_share"), ({"max_latency_ms": "1"}, "max_latency_ms"),
])
def test_bad_configuration(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        CostAwareBalancer(**kwargs)
    assert err.value.field == field


# -- through a real shared registry ------------------------------------------------------------

def _wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_costs_change_at_run_time_and_leases_elsewhere_saturate_the_cheap_backend(
        r: redis.Redis, prefix: str) -> None:
    """Two balancers (as two processes) on one pool: the cost declared in the registry
    steers both; leases held by one fill the cheap backend for the other; a cost changed
    through the registry reaches the other at its next refresh."""
    admin = LoadBalancer(r, "priced", CostAwareBalancer(rng=random.Random(1)), prefix=prefix)
    other = LoadBalancer(r, "priced",
                         CostAwareBalancer(rng=random.Random(2)), prefix=prefix, refresh_s=0.1)
    try:
        admin.add_backend(Backend("cheap", "10.0.0.1:80", metadata={"cost": 1, "capacity": 2}))
        admin.add_backend(Backend("dear", "10.0.0.2:80", metadata={"cost": 4, "capacity": 8}))
        assert other.execute(lambda b: b.id) == "cheap"
        with ExitStack() as held:                 # admin fills "cheap" with fleet-wide leases
            for _ in range(2):
                assert held.enter_context(admin.connection()).id == "cheap"
            _wait_for(lambda: {b.id: b.active_connections
                               for b in other.backends()}["cheap"] == 2, "the leases")
            assert {other.execute(lambda b: b.id) for _ in range(20)} == {"dear"}
        # Leases given back: cheap again, as soon as the other's view shows it.
        _wait_for(lambda: other.select_backend().id == "cheap", "the leases to be released")
        assert {other.execute(lambda b: b.id) for _ in range(20)} == {"cheap"}
        # The price changes at run time: re-register "dear" as the cheaper one.
        admin.remove_backend("dear")
        admin.add_backend(Backend("dear", "10.0.0.2:80", metadata={"cost": 0.5, "capacity": 8}))
        _wait_for(lambda: other.select_backend().id == "dear", "the new cost to be seen")
        assert {other.execute(lambda b: b.id) for _ in range(20)} == {"dear"}
    finally:
        admin.close()
        other.close()
