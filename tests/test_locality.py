"""Locality-aware routing: the rule, exactly; composition with every strategy; three zones,
in one process and in real processes through a real LoadBalancer."""

from __future__ import annotations

import multiprocessing as mp
import random
import uuid
from collections import Counter
from typing import Any

import pytest

from distlb import Backend, ConfigError, LoadBalancer
from distlb.strategies import (
    Context,
    Locality,
    LocalityAwareBalancer,
    NoBackendAvailable,
    PeakEwmaBalancer,
    RoundRobinBalancer,
)
from tests import locality_workers, workers
from tests.test_strategies import ALL

EU_A, EU_B, EU_C = Locality("eu", "a"), Locality("eu", "b"), Locality("eu", "c")
US_A = Locality("us", "a")


def fleet(per_zone: int = 4, zones: str = "abc", region: str = "eu",
          **meta: Any) -> tuple[Backend, ...]:
    return tuple(Backend(f"{region}-{z}{i}", f"10.0.{ord(z)}.{i}:80",
                         metadata={"region": region, "zone": z, **meta})
                 for z in zones for i in range(per_zone))


def down(backends: tuple[Backend, ...], *ids: str) -> tuple[Backend, ...]:
    return tuple(b.with_(healthy=False) if b.id in ids else b for b in backends)


def near(shares: dict[Locality, float], expected: dict[Locality, float]) -> bool:
    return shares.keys() == expected.keys() and all(
        abs(shares[k] - v) < 1e-9 for k, v in expected.items())


# -- the rule, deterministically ---------------------------------------------------------------

def test_a_healthy_zone_keeps_all_its_traffic() -> None:
    s = LocalityAwareBalancer(region="eu", zone="a", rng=random.Random(1))
    backends = fleet()
    assert s.shares(backends) == {EU_A: 1.0}
    assert {s.select(backends).metadata["zone"] for _ in range(500)} == {"a"}


@pytest.mark.parametrize(("lost", "kept"), [(0, 1.0), (1, 1.0), (2, 0.7), (3, 0.35), (4, 0.0)])
def test_a_zone_sheds_in_proportion_to_its_lost_capacity(lost: int, kept: float) -> None:
    """kept = min(1, 1.4 x healthy share of the zone); the rest split over the region's
    other zones by their spare capacity (equal here)."""
    s = LocalityAwareBalancer(region="eu", zone="a")
    backends = down(fleet(), *[f"eu-a{i}" for i in range(lost)])
    expected = {EU_A: kept, EU_B: (1 - kept) / 2, EU_C: (1 - kept) / 2}
    expected = {k: v for k, v in expected.items() if v > 0}   # no share, no entry
    assert near(s.shares(backends), expected)


def test_the_draw_follows_the_shares() -> None:
    s = LocalityAwareBalancer(region="eu", zone="a", rng=random.Random(7))
    backends = down(fleet(), "eu-a0", "eu-a1")
    counts = Counter(s.select(backends).metadata["zone"] for _ in range(20_000))
    assert abs(counts["a"] / 20_000 - 0.7) < 0.015
    assert abs(counts["b"] / 20_000 - 0.15) < 0.015
    assert abs(counts["c"] / 20_000 - 0.15) < 0.015


def test_weights_count_in_a_zones_health() -> None:
    backends = tuple(b.with_(weight=300) if b.id == "eu-a0" else b for b in fleet())
    s = LocalityAwareBalancer(region="eu", zone="a")
    # eu-a0 is half the zone's weight (300 of 600): losing it keeps 1.4 x 0.5 = 0.7.
    assert s.shares(down(backends, "eu-a0"))[EU_A] == pytest.approx(0.7)
    # A drained backend (weight 0) is neither capacity nor a shortfall.
    drained = tuple(b.with_(weight=0) if b.id in ("eu-a0", "eu-a1") else b for b in fleet())
    assert s.shares(drained) == {EU_A: 1.0}


def test_region_before_elsewhere_and_the_cascade() -> None:
    backends = fleet(zones="ab") + fleet(zones="a", region="us")
    s = LocalityAwareBalancer(region="eu", zone="a")
    # Zone a gone: all of it to zone b of the same region, none to the other region.
    assert s.shares(down(backends, *[f"eu-a{i}" for i in range(4)])) == {EU_B: 1.0}
    # Zone a gone, zone b half gone: b takes 0.7, the other region the remaining 0.3.
    half_b = down(backends, *[f"eu-a{i}" for i in range(4)], "eu-b0", "eu-b1")
    assert near(s.shares(half_b), {EU_B: 0.7, US_A: 0.3})


def test_without_a_zone_the_whole_region_is_local() -> None:
    s = LocalityAwareBalancer(region="eu")
    backends = fleet(zones="ab") + fleet(zones="a", region="us")
    assert near(s.shares(backends), {EU_A: 0.5, EU_B: 0.5})


def test_backends_without_a_locality_are_a_last_resort() -> None:
    anywhere = (Backend("x0"), Backend("x1", metadata={"zone": "a"}),   # no region
                Backend("x2", metadata={"region": 5, "zone": "a"}))     # not a str
    s = LocalityAwareBalancer(region="eu", zone="a", rng=random.Random(3))
    backends = fleet(zones="a") + anywhere
    assert s.shares(backends) == {EU_A: 1.0}
    gone = down(backends, *[f"eu-a{i}" for i in range(4)])
    assert sum(s.shares(gone).values()) == pytest.approx(1.0)
    assert {s.select(gone).id for _ in range(200)} == {"x0", "x1", "x2"}


def test_everything_degraded_is_scaled_up_not_dropped() -> None:
    """One zone, 1 of 4 up: 1.4 x 0.25 = 0.35 is all the levels can take, so it is scaled
    up to 1: traffic is never dropped while a backend is up."""
    s = LocalityAwareBalancer(region="eu", zone="a")
    backends = down(fleet(zones="a"), "eu-a0", "eu-a1", "eu-a2")
    assert s.shares(backends) == {EU_A: 1.0}
    assert s.select(backends).id == "eu-a3"
    with pytest.raises(NoBackendAvailable):
        s.select(down(backends, "eu-a3"))
    with pytest.raises(NoBackendAvailable):
        s.select(())


def test_open_breakers_and_tried_backends_count_as_lost_capacity() -> None:
    s = LocalityAwareBalancer(region="eu", zone="a")
    ctx = Context().excluding("eu-a0", "eu-a1")      # what the pool passes for open breakers
    assert near(s.shares(fleet(), ctx), {EU_A: 0.7, EU_B: 0.15, EU_C: 0.15})
    picks = {s.select(fleet(), ctx).id for _ in range(300)}
    assert not picks & {"eu-a0", "eu-a1"}


def test_overload_sheds_like_lost_health() -> None:
    """Zone a at twice its capacity counts as half available: it keeps 0.7, and the
    excess goes to the zone with the most spare capacity."""
    s = LocalityAwareBalancer(region="eu", zone="a")
    backends = tuple(
        b.with_(active_connections={"a": 20, "b": 5, "c": 0}[b.metadata["zone"]])
        for b in fleet(capacity=10))
    # Spare: b has 4 x (1 - 5/10) = 2, c has 4 x 1 = 4: c gets twice b's share of 0.3.
    assert near(s.shares(backends), {EU_A: 0.7, EU_B: 0.1, EU_C: 0.2})
    # At capacity (not above) nothing moves.
    at_cap = tuple(b.with_(active_connections=10) if b.metadata["zone"] == "a" else b
                   for b in fleet(capacity=10))
    assert s.shares(at_cap) == {EU_A: 1.0}
    # The strategy's capacity= applies to backends that declare none.
    s2 = LocalityAwareBalancer(region="eu", zone="a", capacity=10)
    plain = tuple(b.with_(active_connections=20) if b.metadata["zone"] == "a" else b
                  for b in fleet())
    assert near(s2.shares(plain), {EU_A: 0.7, EU_B: 0.15, EU_C: 0.15})
    assert LocalityAwareBalancer(region="eu", zone="a").shares(plain) == {EU_A: 1.0}


def test_spill_goes_by_available_capacity_when_no_locality_has_spare() -> None:
    s = LocalityAwareBalancer(region="eu", zone="a")
    backends = tuple(b.with_(active_connections=20 if b.metadata["zone"] == "b" else 40)
                     for b in fleet(capacity=10))
    shares = s.shares(backends)
    # a: 10/40 = 1/4 available -> 1.4 x 1/4 = 0.35; the region's other zones: (2 + 1) of
    # 8 available -> 1.4 x 3/8 = 0.525. Together 0.875 < 1: both scaled by 1/0.875
    # (0.4 and 0.6), and b (2 of 4 available) gets twice c's part (1 of 4).
    assert near(shares, {EU_A: 0.4, EU_B: 0.4, EU_C: 0.2})


# -- composition -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("per_locality", [True, False], ids=["factory", "instance"])
def test_composes_with_every_strategy(name: str, per_locality: bool) -> None:
    inner = ALL[name] if per_locality else ALL[name]()
    s = LocalityAwareBalancer(inner, region="eu", zone="a", rng=random.Random(2))
    backends = down(fleet(), "eu-a0", "eu-a1", "eu-b3")
    counts = Counter()
    for i in range(2000):
        b = s.select(backends, Context.with_key(f"user{i}"))
        assert b.healthy
        counts[b.metadata["zone"]] += 1
    assert abs(counts["a"] / 2000 - 0.7) < 0.04
    assert counts["b"] and counts["c"]
    # And with the local zone healthy, nothing leaves it.
    assert {s.select(fleet(), Context.with_key(f"u{i}")).metadata["zone"]
            for i in range(300)} == {"a"}


def test_each_locality_gets_its_own_inner_strategy_from_a_factory() -> None:
    s = LocalityAwareBalancer(RoundRobinBalancer, region="eu", zone="a", rng=random.Random(1))
    backends = fleet(zones="a")
    # Round robin within the zone, exactly, with its own cursor.
    assert [s.select(backends).id for _ in range(8)] == [f"eu-a{i % 4}" for i in range(8)]
    assert s.strategy_for(EU_A) is s.strategy_for(EU_A)
    assert s.strategy_for(EU_A) is not s.strategy_for(EU_B)


def test_observe_reaches_the_inner_strategy_of_the_backends_locality() -> None:
    s = LocalityAwareBalancer(lambda: PeakEwmaBalancer(rng=random.Random(1)),
                              region="eu", zone="a", rng=random.Random(1))
    backends = fleet(per_zone=2)
    s.select(backends)
    s.observe("eu-a1", 0.5)
    inner = s.strategy_for(EU_A)
    assert isinstance(inner, PeakEwmaBalancer)
    assert inner.cost(backends[1]) == pytest.approx(500.0 / 100)   # ms x 1 / weight
    # eu-a1 is now slow: peak-EWMA inside zone a avoids it.
    assert {s.select(backends).id for _ in range(50)} == {"eu-a0"}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"region": ""}, "region"), ({"region": 3}, "region"), ({"region": "x" * 129}, "region"),
    ({"region": "eu", "zone": ""}, "zone"),
    ({"region": "eu", "overprovisioning": 0.5}, "overprovisioning"),
    ({"region": "eu", "overprovisioning": float("nan")}, "overprovisioning"),
    ({"region": "eu", "capacity": 0}, "capacity"),
    ({"region": "eu", "strategy": object()}, "strategy"),
    ({"region": "eu", "strategy": lambda: 3}, "strategy"),
])
def test_bad_configuration(kwargs: dict[str, Any], field: str) -> None:
    strategy = kwargs.pop("strategy", None)
    with pytest.raises(ConfigError) as err:
        LocalityAwareBalancer(strategy, **kwargs)
    assert err.value.field == field


# -- three zones, three callers ----------------------------------------------------------------

def test_three_callers_in_three_zones_over_one_snapshot() -> None:
    """Three processes (instances) share the fleet's snapshot: each stays in its zone while
    healthy; when zone a loses half its backends only zone a's caller moves 30% of its
    traffic, split between b and c; when a recovers, all of it comes back."""
    callers = {z: LocalityAwareBalancer(region="eu", zone=z, rng=random.Random(i))
               for i, z in enumerate("abc")}

    def run(backends: tuple[Backend, ...]) -> dict[str, Counter[str]]:
        return {z: Counter(s.select(backends).metadata["zone"] for _ in range(10_000))
                for z, s in callers.items()}

    healthy = run(fleet())
    assert all(c == Counter({z: 10_000}) for z, c in healthy.items())
    degraded = run(down(fleet(), "eu-a0", "eu-a1"))
    assert abs(degraded["a"]["a"] / 10_000 - 0.7) < 0.02
    assert abs(degraded["a"]["b"] - degraded["a"]["c"]) < 400
    assert degraded["b"] == Counter(b=10_000) and degraded["c"] == Counter(c=10_000)
    assert run(fleet()) == healthy


# -- real processes through a real LoadBalancer ------------------------------------------------

@pytest.mark.multiprocess
def test_processes_in_three_zones_stay_local_spill_by_the_rule_and_return(
        target: dict[str, Any]) -> None:
    prefix = f"geo{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    admin = LoadBalancer(workers.make_client(target), "geo", prefix=prefix)
    for b in fleet():
        admin.add_backend(b)
    commands = {z: ctx.Queue() for z in "abc"}
    out = ctx.Queue()
    procs = [ctx.Process(target=locality_workers.route_from_zone,
                         args=(target, prefix, z, i, commands[z], out))
             for i, z in enumerate("abc")]
    for p in procs:
        p.start()
    calls = 1000
    phases = [("healthy", []), ("degraded", ["eu-a0", "eu-a1"]),
              ("worse", ["eu-a0", "eu-a1", "eu-a2"]), ("recovered", [])]
    seen: dict[str, dict[str, dict[str, int]]] = {}
    try:
        for phase, unhealthy in phases:
            for b in fleet():
                admin.update_backend_health(b.id, b.id not in unhealthy)
            for q in commands.values():
                q.put((phase, unhealthy, calls))
            for _ in procs:
                zone, got_phase, counts = out.get(timeout=180)
                assert "error" not in counts, (zone, got_phase, counts)
                seen.setdefault(got_phase, {})[zone] = counts
        for q in commands.values():
            q.put(None)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        admin.close()
    print(seen)
    for phase in ("healthy", "recovered"):
        for z in "abc":
            assert seen[phase][z] == {z: calls}, (phase, z, seen[phase][z])
    for phase, kept in (("degraded", 0.7), ("worse", 0.35)):
        a = seen[phase]["a"]
        assert abs(a.get("a", 0) / calls - kept) < 0.07, (phase, a)
        assert a.get("b", 0) > 0.5 * (1 - kept) / 2 * calls
        assert a.get("c", 0) > 0.5 * (1 - kept) / 2 * calls
        assert seen[phase]["b"] == {"b": calls} and seen[phase]["c"] == {"c": calls}
