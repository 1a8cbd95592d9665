"""Server CPU per script call, from the server's own ``INFO commandstats``.

Client-side rates mix the round trip, redis-py and distlb's Python with the script's
work; this isolates the script. Each figure is ``cmdstat_evalsha`` ``usec_per_call``
after ``CONFIG RESETSTAT`` and ``n`` calls of one kind, so the time a script's own
commands (TIME, HMGET, HSET, PEXPIRE) take inside it is included, and compared with
``n`` calls of ``return 1`` measured the same way (the floor: the EVALSHA dispatch and
the Lua call itself). Calls go one at a time, as a sync client sends them: pipelined,
the server runs them back to back with hot caches and every figure drops (``return 1``
from ~6 to ~1.2 us), which is not the case the ratios are about.

    python -m benchmarks._server [--redis-url URL] [-n 2000] [--rounds 5]

The server must be otherwise idle (the counters are server-wide).
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from distlb import Backend, LeakyBucket, Limit, LoadBalancer, TokenBucket, TrafficShaper
from distlb._core.ops import Call

TRIVIAL = "return 1"
Planned = tuple[str, Sequence[Any], Sequence[Any]]     # (sha, keys, args)


def _usec_per_call(r: redis.Redis, calls: Sequence[Planned], batch: int = 1) -> float:
    """``usec_per_call`` of EVALSHA over ``calls``, sent ``batch`` at a time."""
    r.config_resetstat()
    for i in range(0, len(calls), batch):
        p = r.pipeline(transaction=False)
        for sha, keys, args in calls[i:i + batch]:
            p.evalsha(sha, len(keys), *keys, *args)
        p.execute()
    stats = r.info("commandstats").get("cmdstat_evalsha")
    if not stats or stats["calls"] != len(calls):
        raise RuntimeError(f"commandstats counted {stats and stats['calls']} EVALSHA, "
                           f"expected {len(calls)}: is another client using this server?")
    return float(stats["usec_per_call"])


def _planned(call: Call[Any]) -> Planned:
    return call.script.sha, call.keys, call.args


def _cases(r: redis.Redis, prefix: str,
           owned: list[Any]) -> dict[str, Callable[[int], list[Planned]]]:
    """Per kind of call, a function giving ``n`` calls as distlb plans them (on the
    common path: admitted, one bucket or lease, no overrides). The objects it makes are
    appended to ``owned``: the caller closes them (the pool holds an event subscription)."""
    huge = dict(rate_per_s=1e9, burst=1e9)
    tb = TokenBucket(r, "srv-tb", prefix=prefix, **huge)
    lk = LeakyBucket(r, "srv-lk", rate_per_s=1e9, capacity=1e9, prefix=prefix)
    sh = TrafficShaper(r, "srv-sh", global_limit=Limit(1e9, 1e9), prefix=prefix)
    for obj in (tb, lk):
        obj.try_acquire()                                       # loads the script
    sh.try_acquire()
    lb = LoadBalancer(r, "srv-lb", rate_limit=Limit(1e9, 1e9), prefix=prefix)
    owned.extend((tb, lk, sh, lb))
    for i in range(5):
        lb.add_backend(Backend(f"node{i}", f"10.0.0.{i}:8080"))
    lb.execute(lambda b: None)                                  # a fresh view, scripts loaded
    leases = [uuid.uuid4().hex for _ in range(10_000)]

    def admit(n: int) -> list[Planned]:
        from distlb.balancer import Context
        return [_planned(lb._acquire_call(f"node{i % 5}", leases[i % len(leases)], Context(),
                                          True)) for i in range(n)]

    def release(n: int) -> list[Planned]:
        return [_planned(lb._plan("release", [f"node{i % 5}", leases[i % len(leases)],
                                              "1.250", 0, repr(lb.latency_alpha)]))
                for i in range(n)]

    return {
        "bucket.lua: TokenBucket.try_acquire": lambda n: [_planned(tb._call("take", 1))] * n,
        "leaky.lua: LeakyBucket.try_acquire": lambda n: [_planned(lk._call("take", 1))] * n,
        "bucket.lua: TrafficShaper, global only":
            lambda n: [_planned(sh._call("take", None, 1, 0, None))] * n,
        "pool.lua admit (rate limit + lease)": admit,
        "pool.lua release (lease + statistics)": release,
    }


def server_costs(r: redis.Redis, prefix: str, n: int = 2000,
                 rounds: int = 5) -> tuple[float, dict[str, float]]:
    """The median server us per call of ``return 1`` and of each case, over ``rounds``.

    Each round runs the admits, then the releases of the leases they took."""
    sha = r.script_load(TRIVIAL)
    owned: list[Any] = []
    try:
        cases = _cases(r, prefix, owned)
        planned = {name: make(n) for name, make in cases.items()}
        floor: list[float] = []
        costs: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            floor.append(_usec_per_call(r, [(sha, (), ())] * n))
            for name, calls in planned.items():
                costs[name].append(_usec_per_call(r, calls))
    finally:
        for obj in reversed(owned):
            obj.close()                 # the pool leaves its event subscription
    return statistics.median(floor), {k: statistics.median(v) for k, v in costs.items()}


def main() -> None:
    import argparse

    from distlb.embedded import EmbeddedServer
    ap = argparse.ArgumentParser(description="server us per distlb script call")
    ap.add_argument("--redis-url")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with EmbeddedServer() if not a.redis_url else _Nothing(a.redis_url) as srv:
        r = redis.Redis.from_url(a.redis_url or srv.url)
        floor, costs = server_costs(r, f"srv{uuid.uuid4().hex[:6]}", a.n, a.rounds)
        print(f"  {'return 1':<44} {floor:7.2f} us  1.00x")
        for name, us in costs.items():
            print(f"  {name:<44} {us:7.2f} us  {us / floor:.2f}x")


class _Nothing:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
