"""Routing benchmarks: cost-aware routing against round robin (cost saved, latency paid),
and selections per second of the locality and cost strategies."""

from __future__ import annotations

import heapq
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distlb.strategies import (
    Backend,
    Context,
    CostAwareBalancer,
    LeastConnectionsBalancer,
    LocalityAwareBalancer,
    PowerOfTwoChoicesBalancer,
    RoundRobinBalancer,
    Strategy,
)

#: The priced fleet: (id, cost per request, capacity in concurrent requests, base latency s).
#: Cheap and slow (spot, on-premises), middling, dear and fast (on-demand, another cloud).
PRICED = (("cheap0", 1.0, 8, 0.030), ("cheap1", 1.0, 8, 0.030),
          ("mid0", 3.0, 8, 0.020), ("mid1", 3.0, 8, 0.020),
          ("dear0", 10.0, 16, 0.010), ("dear1", 10.0, 16, 0.010))


@dataclass(frozen=True)
class CostRun:
    cost_per_request: float
    mean_ms: float
    p99_ms: float
    shares: dict[str, float]


def simulate_cost(make: Callable[[], Any], *, rate_per_s: float = 400.0,
                  requests: int = 20_000, seed: int = 7) -> CostRun:
    """Cost and latency of an open-loop load (Poisson, ``rate_per_s``) on the priced fleet.

    A backend serves a request in its base time stretched by its occupancy:
    ``latency = base x (1 + active / capacity)`` (queueing grows with load, doubling at
    capacity). Strategies see live connection counts, each backend's moving average of
    latency, and its declared cost and capacity (metadata); those with ``observe`` get
    every completed request's latency. Same arrivals for every strategy (same seed).
    """
    rng = random.Random(seed)
    spec = {bid: (cost, cap, base) for bid, cost, cap, base in PRICED}
    active = dict.fromkeys(spec, 0)
    ewma = dict.fromkeys(spec, 0.0)
    served = dict.fromkeys(spec, 0)
    done: list[tuple[float, str, float]] = []
    latencies: list[float] = []
    spent = 0.0
    now = 0.0
    strategy = make()
    clock = [0.0]
    if hasattr(strategy, "clock"):
        strategy.clock = lambda: clock[0]
    for _ in range(requests):
        now += rng.expovariate(rate_per_s)
        while done and done[0][0] <= now:
            t_end, bid, lat = heapq.heappop(done)
            active[bid] -= 1
            ewma[bid] = ewma[bid] * 0.9 + lat * 1000 * 0.1 if ewma[bid] else lat * 1000
            clock[0] = t_end
            if hasattr(strategy, "observe"):
                strategy.observe(bid, lat, True)
        clock[0] = now
        snapshot = tuple(Backend(bid, active_connections=active[bid], latency_ms=ewma[bid],
                                 metadata={"cost": cost, "capacity": cap})
                         for bid, (cost, cap, _) in spec.items())
        chosen = strategy.select(snapshot, Context()).id
        cost, cap, base = spec[chosen]
        lat = base * (1 + active[chosen] / cap)
        active[chosen] += 1
        served[chosen] += 1
        spent += cost
        heapq.heappush(done, (now + lat, chosen, lat))
        latencies.append(lat * 1000)
    latencies.sort()
    return CostRun(spent / requests, statistics.fmean(latencies),
                   latencies[int(len(latencies) * 0.99)],
                   {bid: n / requests for bid, n in served.items()})


COST_STRATEGIES: dict[str, Callable[[], Any]] = {
    "round robin": RoundRobinBalancer,
    "least connections": LeastConnectionsBalancer,
    "cost-aware": lambda: CostAwareBalancer(rng=random.Random(1)),
    "cost-aware, max_latency_ms=45": lambda: CostAwareBalancer(max_latency_ms=45,
                                                               rng=random.Random(1)),
}


def zoned_backends(n: int, rng: random.Random) -> tuple[Backend, ...]:
    """A snapshot of ``n`` backends spread over 3 zones of 2 regions, priced, with capacity."""
    places = (("eu", "a"), ("eu", "b"), ("us", "a"))
    return tuple(Backend(f"node{i}", weight=rng.randint(50, 150),
                         active_connections=rng.randint(0, 40), latency_ms=rng.uniform(5, 50),
                         metadata={"region": places[i % 3][0], "zone": places[i % 3][1],
                                   "cost": rng.choice((1, 2, 5)), "capacity": 50})
                 for i in range(n))


ROUTING_STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "locality-aware (round robin inside)": lambda: LocalityAwareBalancer(
        RoundRobinBalancer, region="eu", zone="a"),
    "locality-aware (power of two inside)": lambda: LocalityAwareBalancer(
        PowerOfTwoChoicesBalancer, region="eu", zone="a"),
    "cost-aware": CostAwareBalancer,
}


def selections_per_s(make: Callable[[], Strategy], n: int, seconds: float, *,
                     fresh: bool = False) -> float:
    """Picks per second on one tuple snapshot of ``n`` zoned, priced backends; ``fresh``:
    a new snapshot tuple for every pick (as after each lease reply in the pool), so
    nothing computed for the previous snapshot is reused."""
    pool = zoned_backends(n, random.Random(1))
    ctx = Context()
    s = make()
    s.select(pool, ctx)
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(64):
            s.select(tuple(list(pool)) if fresh else pool, ctx)
        count += 64
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed
