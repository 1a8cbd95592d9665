"""Strategy benchmarks: selections per second, ring lookups vs uhashring, key movement,
and a simulation of adaptive selection against round robin with one slow backend."""

from __future__ import annotations

import heapq
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from distlb.strategies import (
    AdaptiveBalancer,
    Backend,
    ConsistentHashBalancer,
    Context,
    LeastConnectionsBalancer,
    MaglevBalancer,
    PeakEwmaBalancer,
    PowerOfTwoChoicesBalancer,
    RendezvousHashBalancer,
    RoundRobinBalancer,
    SmoothWeightedRoundRobinBalancer,
    Strategy,
    WeightedLeastConnectionsBalancer,
    WeightedRoundRobinBalancer,
)

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "round robin": RoundRobinBalancer,
    "weighted round robin (EDF)": WeightedRoundRobinBalancer,
    "smooth weighted round robin": SmoothWeightedRoundRobinBalancer,
    "least connections": LeastConnectionsBalancer,
    "weighted least conn + slow start": lambda: WeightedLeastConnectionsBalancer(slow_start_s=30),
    "power of two choices": PowerOfTwoChoicesBalancer,
    "consistent hash ring (150 vnodes)": ConsistentHashBalancer,
    "ring with bounded loads (c=1.25)": lambda: ConsistentHashBalancer(bounded_load=1.25),
    "rendezvous": RendezvousHashBalancer,
    "maglev": MaglevBalancer,
    "adaptive": AdaptiveBalancer,
    "peak EWMA": PeakEwmaBalancer,
}


def backends(n: int, rng: random.Random) -> tuple[Backend, ...]:
    """A snapshot (a tuple, as the load balancer hands them to strategies)."""
    return tuple(Backend(f"node{i}", f"10.0.{i // 250}.{i % 250}:8080", weight=rng.randint(50, 150),
                    active_connections=rng.randint(0, 40), latency_ms=rng.uniform(5, 50),
                    error_rate=rng.uniform(0, 0.05), throughput_per_s=rng.uniform(10, 500))
                 for i in range(n))


def selections_per_s(make: Callable[[], Strategy], n: int, seconds: float) -> float:
    rng = random.Random(1)
    pool = backends(n, rng)
    ctxs = [Context.with_key(f"user{i}") for i in range(1024)]
    s = make()
    s.select(pool, ctxs[0])  # build rings and tables outside the clock
    count, start = 0, time.perf_counter()
    while True:
        for ctx in ctxs[:64]:
            s.select(pool, ctx)
        count += 64
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def _rate(fn: Callable[[Any], Any], inputs: list[Any]) -> float:
    t = time.perf_counter()
    for x in inputs:
        fn(x)
    return len(inputs) / (time.perf_counter() - t)


def rings_vs_uhashring(n: int, rounds: int) -> dict[str, float]:
    """Keys per second at ``n`` backends: uhashring's ``get_node`` (md5, its default,
    160 vnodes) beside our ring and Maglev through each public path, measured in
    alternation so machine noise hits all alike. Missing uhashring: key absent.

    Each path is fed its own ready inputs, as a caller holds them: the key strings, or
    for ``select(ctx)`` one ``Context`` per key built beforehand (no dict lookup from
    key to context inside the timed loop: that is the harness's work, not the path's)."""
    keys = [f"user{i}" for i in range(20_000)]
    ctxs = [Context.with_key(k) for k in keys]
    snapshot = tuple(Backend(f"node{i}") for i in range(n))
    ring, maglev = ConsistentHashBalancer(), MaglevBalancer()
    ring.build(snapshot)
    paths: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "ring lookup()": (ring.lookup, keys),
        "ring select_key()": (lambda k: ring.select_key(snapshot, k), keys),
        "ring select(ctx)": (lambda c: ring.select(snapshot, c), ctxs),
        "maglev select_key()": (lambda k: maglev.select_key(snapshot, k), keys),
        "maglev select(ctx)": (lambda c: maglev.select(snapshot, c), ctxs),
    }
    try:
        from uhashring import HashRing
        paths["uhashring get_node()"] = (HashRing(nodes=[b.id for b in snapshot]).get_node,
                                         keys)
    except ImportError:
        pass
    for fn, inputs in paths.values():
        fn(inputs[0])                     # build rings and tables outside the clock
    figures: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (fn, inputs) in paths.items():
            figures[name].append(_rate(fn, inputs))
    return {name: statistics.median(f) for name, f in figures.items()}


def key_movement(make: Callable[[], Strategy], n: int) -> float:
    keys = [f"user{i}" for i in range(20_000)]
    s = make()
    before = [Backend(f"node{i}") for i in range(n)]
    after = [*before, Backend(f"node{n}")]
    a = [s.select(before, Context.with_key(k)).id for k in keys]
    b = [s.select(after, Context.with_key(k)).id for k in keys]
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(keys)


def simulate(make: Callable[[], Any], *, requests: int = 20_000, seed: int = 7) -> tuple[float,
                                                                                       float]:
    """Mean and p99 latency (ms) of an open-loop load on 5 backends, one of them slow.

    Requests arrive as a Poisson process at 500/s. A backend
    serves each request in its base time (5 ms, the slow one 50 ms) stretched by
    its queue: latency = base x (1 + active / 4). Strategies see live connection
    counts and a moving average of each backend's latency; those with ``observe``
    get every completed request's latency.
    """
    rng = random.Random(seed)
    base = {f"b{i}": 0.005 for i in range(5)}
    base["b4"] = 0.050
    active = dict.fromkeys(base, 0)
    ewma = dict.fromkeys(base, 0.0)
    now = 0.0
    done: list[tuple[float, str, float]] = []
    latencies = []
    strategy = make()
    clock = [0.0]
    if hasattr(strategy, "clock"):
        strategy.clock = lambda: clock[0]
    for _ in range(requests):
        now += rng.expovariate(500.0)
        while done and done[0][0] <= now:
            t_end, bid, lat = heapq.heappop(done)
            active[bid] -= 1
            ewma[bid] = ewma[bid] * 0.9 + lat * 1000 * 0.1 if ewma[bid] else lat * 1000
            clock[0] = t_end
            if hasattr(strategy, "observe"):
                strategy.observe(bid, lat, True)
        clock[0] = now
        snapshot = [Backend(bid, active_connections=active[bid], latency_ms=ewma[bid])
                    for bid in base]
        chosen = strategy.select(snapshot, Context.with_key(f"k{rng.random()}")).id
        lat = base[chosen] * (1 + active[chosen] / 4)
        active[chosen] += 1
        heapq.heappush(done, (now + lat, chosen, lat))
        latencies.append(lat * 1000)
    latencies.sort()
    return statistics.fmean(latencies), latencies[int(len(latencies) * 0.99)]
