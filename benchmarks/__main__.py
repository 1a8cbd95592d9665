"""distlb benchmarks: figures and ratios against the bare EVALSHA round trip, in one run.

    python -m benchmarks                      # embedded Valkey
    python -m benchmarks --redis-url URL      # a server of yours
    python -m benchmarks --quick              # shorter rounds (CI smoke run)
    python -m benchmarks --decisions          # only the decision and asyncio rows (+ peers)
    python -m benchmarks --rings              # only the ring and Maglev rows vs uhashring

Every figure is the median of several rounds. The machines this runs on are
small and noisy: read the ratios, which compare figures taken side by side on
the same connection in the same run, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, suppress
from typing import Any

import redis
import redis.asyncio

import distlb.aio as aio
from benchmarks import _peers, _routing, _server, _strategies, _workers
from distlb import (
    Backend,
    CircuitBreaker,
    LeakyBucket,
    Limit,
    LoadBalancer,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
    RoundRobinBalancer,
    TokenBucket,
    TrafficShaper,
)
from distlb.embedded import EmbeddedServer

TRIVIAL = "return 1"


def rate_of(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def median_rate(fn: Callable[[], Any], rounds: int, seconds: float) -> float:
    fn()  # warm up: connect, load scripts
    return statistics.median(rate_of(fn, seconds) for _ in range(rounds))


def client_python(url: str, prefix: str, rounds: int) -> dict[str, float]:
    """µs of client-side Python per call against a stub connection that answers at once
    (the call's real reply, recorded first): redis-py's and distlb's work per decision with
    the network and the server taken out. The best of ``rounds``: the machine's noise only
    ever adds."""
    c = redis.Redis.from_url(url)
    sha = c.script_load(TRIVIAL)
    tb = TokenBucket(c, "stub-tb", rate_per_s=1e9, burst=1e9, prefix=prefix)
    lk = LeakyBucket(c, "stub-lk", rate_per_s=1e9, capacity=1e9, prefix=prefix)
    gs = TrafficShaper.with_global_limit(c, 1e9, 1e9, name="stub-gs", prefix=prefix)
    calls: dict[str, Callable[[], Any]] = {
        "bare EVALSHA (redis-py alone)": lambda: c.evalsha(sha, 0),
        "TokenBucket.try_acquire": tb.try_acquire,
        "LeakyBucket.try_acquire": lk.try_acquire,
        "TrafficShaper.try_acquire (global only)": gs.try_acquire}
    conn = c.connection_pool.get_connection()
    c.connection_pool.release(conn)
    real_read = conn.read_response
    replies: dict[str, Any] = {}
    for name, fn in calls.items():
        fn()  # loads the script
        seen: list[Any] = []
        conn.read_response = lambda *a, seen=seen, **k: seen.append(real_read(*a, **k)) or seen[-1]
        fn()
        replies[name] = seen[-1]
    conn.send_packed_command = lambda *a, **k: None
    out = {}
    for name, fn in calls.items():
        conn.read_response = lambda *a, reply=replies[name], **k: reply
        best = math.inf
        for _ in range(rounds):
            start = time.process_time()  # CPU time: waiting for a core does not count
            for _ in range(20_000):
                fn()
            best = min(best, time.process_time() - start)
        out[name] = best / 20_000 * 1e6
    del conn.read_response, conn.send_packed_command
    c.connection_pool.disconnect()
    return out


def execute_python(url: str, prefix: str, rounds: int) -> float:
    """µs of client-side CPU per ``LoadBalancer.execute`` (no-op, release="sync": two
    ``pool.lua`` calls) against a stub connection replaying the calls' real replies, as
    :func:`client_python` does for decisions: distlb's Python and redis-py's connection
    handling, without the network and the server. The best of ``rounds``."""
    c = redis.Redis.from_url(url)
    # refresh_s: no snapshot read falls inside the timed loop (its reply has another shape)
    lb = LoadBalancer(c, "stub-lb", RoundRobinBalancer(), prefix=prefix, refresh_s=3600)
    for i in range(5):
        lb.add_backend(Backend(f"node{i}", f"10.0.0.{i}:8080"))
    noop: Callable[[Backend], Any] = lambda b: b.id  # noqa: E731
    for _ in range(20):
        lb.execute(noop)
    conn = c.connection_pool.get_connection()
    c.connection_pool.release(conn)
    real_read = conn.read_response
    seen: list[Any] = []
    conn.read_response = lambda *a, **k: seen.append(real_read(*a, **k)) or seen[-1]
    for _ in range(10):
        lb.execute(noop)
    replies, turn = list(seen), [0]

    def replay(*a: Any, **k: Any) -> Any:
        turn[0] += 1
        return replies[turn[0] % len(replies)]

    conn.read_response = replay
    conn.send_packed_command = lambda *a, **k: None
    best = math.inf
    try:
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(5_000):
                lb.execute(noop)
            best = min(best, time.process_time() - start)
    finally:
        del conn.read_response, conn.send_packed_command
        lb.close()
        c.connection_pool.disconnect()
    return best / 5_000 * 1e6


def paired(fn: Callable[[], Any], baseline: Callable[[], Any], rounds: int,
           seconds: float) -> tuple[float, float]:
    """Median rate of ``fn`` and the median of its per-round ratio to ``baseline``, the
    two measured back to back in every round, so machine noise hits both alike."""
    fn()
    baseline()
    rates, ratios = [], []
    for _ in range(rounds):
        base = rate_of(baseline, seconds / 2)
        rate = rate_of(fn, seconds)
        base = (base + rate_of(baseline, seconds / 2)) / 2   # before and after
        rates.append(rate)
        ratios.append(rate / base)
    return statistics.median(rates), statistics.median(ratios)


async def async_rate(make_call: Callable[[], Awaitable[Any]], tasks: int, seconds: float) -> float:
    count = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await make_call()
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*[loop() for _ in range(tasks)])
    return count / (time.perf_counter() - start)


def multiprocess_accuracy(url: str, seconds: float, workers: int = 4) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    procs = [ctx.Process(target=_workers.hammer, args=(url, prefix, seconds, barrier, out))
             for _ in range(workers)]
    for p in procs:
        p.start()
    admitted = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    return admitted, 500 * seconds + 50


def _server_commands(r: redis.Redis) -> int:
    """Commands the server has run, other than the script calls around them (and the
    INFO that asks): scripts' own commands, for a per-call count from two readings."""
    stats = r.info("commandstats")
    return sum(int(v.get("calls", 0)) for k, v in stats.items()
               if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_info"))


def _server_version(r: redis.Redis) -> str:
    info = r.info("server")
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info['redis_version']}"


def retry_storm(budget: RetryBudget | None, requests: int) -> float:
    """Attempts per request that a dead backend receives under a 3-attempt policy."""
    policy = RetryPolicy.fixed(0, max_attempts=3).with_budget(budget)
    attempts = 0

    def dead() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("dead")

    for _ in range(requests):
        with suppress(ConnectionError, RetryBudgetExhausted):
            policy.execute(dead)
    return attempts / requests


def trip_propagation(url: str, watchers: int) -> list[float]:
    """Seconds from one process tripping a breaker to each other process seeing it open."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    procs = [ctx.Process(target=_workers.watch_breaker, args=(url, prefix, ready, out))
             for _ in range(watchers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    cb = CircuitBreaker(redis.Redis.from_url(url), "watched", prefix=prefix,
                        failure_threshold=1, open_timeout_s=60)
    t0 = time.monotonic()
    cb.record_failure()
    seen = [out.get(timeout=30) - t0 for _ in procs]
    for p in procs:
        p.join()
    cb.close()
    return seen


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, name: str, value: str, note: str = "") -> None:
        self.rows.append((name, value, note))
        print(f"  {name:<52} {value:>14}  {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url")
    ap.add_argument("--quick", action="store_true", help="short rounds, for a smoke run")
    ap.add_argument("--decisions", action="store_true",
                    help="only the decision and asyncio rows (and the peer limiters)")
    ap.add_argument("--rings", action="store_true",
                    help="only the ring and Maglev rows against uhashring (no server)")
    args = ap.parse_args(argv)
    if args.rings:
        ring_benchmarks(Report(), quick=args.quick)
        return 0
    rounds, seconds = (3, 0.3) if args.quick else (5, 1.0)

    with ExitStack() as stack:
        url = args.redis_url or stack.enter_context(EmbeddedServer()).url
        r = redis.Redis.from_url(url)
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        print(f"distlb benchmarks against {url} ({_server_version(r)}); "
              f"median of {rounds} x {seconds:g}s\n")
        rep = Report()

        sha = r.script_load(TRIVIAL)
        bare = median_rate(lambda: r.evalsha(sha, 0), rounds, seconds)
        rep.add("bare EVALSHA (trivial script), sync, 1 connection", f"{bare:,.0f}/s", "1.00x")

        def pipelined() -> None:
            p = r.pipeline(transaction=False)
            for _ in range(100):
                p.evalsha(sha, 0)
            p.execute()
        piped = median_rate(pipelined, rounds, seconds) * 100
        rep.add("bare EVALSHA, pipelined x100", f"{piped:,.0f}/s", f"{piped / bare:.2f}x")

        floor, costs = _server.server_costs(r, prefix, 500 if args.quick else 2000, rounds)
        rep.add("server CPU: EVALSHA of return 1", f"{floor:.1f} us/call",
                "1.00x (INFO commandstats)")
        for name, us in costs.items():
            rep.add(f"server CPU: {name}", f"{us:.1f} us/call",
                    f"{us / floor:.2f}x return 1")

        tb = TokenBucket(r, "tb", rate_per_s=1e9, burst=1e9, prefix=prefix)
        # The same script call with no distlb Python around it: splits the gap
        # between try_acquire and the bare round trip into Lua work and our overhead.
        tb.try_acquire()  # loads the script
        call = tb._call("take", 1)
        def bare_call() -> None:
            r.evalsha(sha, 0)

        raw, raw_ratio = paired(lambda: r.evalsha(call.script.sha, len(call.keys), *call.keys,
                                                  *call.args), bare_call, rounds, seconds)
        rep.add("bucket.lua via raw EVALSHA (no distlb Python)", f"{raw:,.0f}/s",
                f"{raw_ratio:.2f}x bare")
        tb_rate, tb_ratio = paired(tb.try_acquire, bare_call, rounds, seconds)
        rep.add("TokenBucket.try_acquire, sync", f"{tb_rate:,.0f}/s",
                f"{tb_ratio:.2f}x bare, {tb_ratio / raw_ratio:.2f}x raw")

        peer_limiters(rep, url, prefix, bare_call, rounds, seconds, tb_ratio)
        deny_path(rep, r, url, prefix, bare_call, rounds, seconds)

        shaper = TrafficShaper(r, "ts", global_limit=Limit(1e9, 1e9),
                               client_limit=Limit(1e9, 1e9), prefix=prefix)
        sh_rate, sh_ratio = paired(lambda: shaper.try_acquire("alice"), bare_call, rounds,
                                   seconds)
        rep.add("TrafficShaper.try_acquire (global+client), sync", f"{sh_rate:,.0f}/s",
                f"{sh_ratio:.2f}x bare")

        gshaper = TrafficShaper.with_global_limit(r, 1e9, 1e9, name="tsg", prefix=prefix)
        gs_rate, gs_ratio = paired(gshaper.try_acquire, bare_call, rounds, seconds)
        rep.add("TrafficShaper.try_acquire (global only), sync", f"{gs_rate:,.0f}/s",
                f"{gs_ratio:.2f}x bare")
        lk = LeakyBucket(r, "lk", rate_per_s=1e9, capacity=1e9, prefix=prefix)
        lk_rate, lk_ratio = paired(lk.try_acquire, bare_call, rounds, seconds)
        rep.add("LeakyBucket.try_acquire, sync", f"{lk_rate:,.0f}/s", f"{lk_ratio:.2f}x bare")

        # Client Python per decision against a stub connection (no network, no server).
        stub = client_python(url, prefix, rounds)
        floor_py = stub.pop("bare EVALSHA (redis-py alone)")
        rep.add("client Python: bare EVALSHA (redis-py alone)", f"{floor_py:.1f} us/call",
                "(stub connection)")
        for label, us in stub.items():
            rep.add(f"client Python: {label}", f"{us:.1f} us/call",
                    f"{us - floor_py:+.1f} us against the bare call")

        async def run_async(make: Callable[[Any], Any], tasks: int) -> float:
            """``make(client)`` gives the decision to time, or (it, a coroutine function
            closing what it made: before the client closes, so nothing is cut mid-call)."""
            ar = redis.asyncio.Redis.from_url(url)
            made = await make(ar)
            decide, done = made if isinstance(made, tuple) else (made, None)
            await decide()
            figures = [await async_rate(decide, tasks, seconds) for _ in range(rounds)]
            if done is not None:
                await done()
            await ar.aclose()
            return statistics.median(figures)

        async def atb_of(ar: Any) -> Any:
            return aio.TokenBucket(ar, "atb", rate_per_s=1e9, burst=1e9, prefix=prefix).try_acquire

        async def ashaper_of(ar: Any) -> Any:
            return aio.TrafficShaper.with_global_limit(ar, 1e9, 1e9, name="atsg",
                                                       prefix=prefix).try_acquire

        async def alk_of(ar: Any) -> Any:
            return aio.LeakyBucket(ar, "alk", rate_per_s=1e9, capacity=1e9,
                                   prefix=prefix).try_acquire

        async def many_of(ar: Any) -> Any:
            # 256 buckets on one client, one task each: the batcher is per client
            buckets = [aio.TokenBucket(ar, f"atb{i}", rate_per_s=1e9, burst=1e9, prefix=prefix)
                       for i in range(256)]
            it = iter(range(1 << 62))
            return lambda: buckets[next(it) % 256].try_acquire()

        for label, make, tasks, sync_rate in (
                ("aio TokenBucket.try_acquire, 64 tasks, 1 client", atb_of, 64, tb_rate),
                ("aio TokenBucket.try_acquire, 256 tasks, 1 client", atb_of, 256, tb_rate),
                ("aio 256 TokenBuckets, 256 tasks, 1 client", many_of, 256, tb_rate),
                ("aio TrafficShaper (global only), 64 tasks", ashaper_of, 64, gs_rate),
                ("aio LeakyBucket.try_acquire, 64 tasks", alk_of, 64, lk_rate)):
            a_rate = asyncio.run(run_async(make, tasks))
            rep.add(label, f"{a_rate:,.0f}/s", f"{a_rate / sync_rate:.2f}x sync")
        if args.decisions:
            r.close()
            return 0

        cb = CircuitBreaker(r, "closed", prefix=prefix)
        cb.can_attempt()

        def closed_call() -> None:
            cb.record_success(cb.can_attempt())
        cb_rate = median_rate(closed_call, rounds, seconds)
        rep.add("CircuitBreaker can_attempt+record_success, closed", f"{cb_rate:,.0f}/s",
                f"{cb_rate / bare:.1f}x bare (no round trip while closed)")
        cb.close()   # leaves the event subscription before the server goes away
        pb = _peers.pybreaker_closed(url, prefix)
        if pb is None:
            rep.add("  peer: pybreaker (Redis storage), closed", "not installed",
                    "pip install '.[bench]'")
        else:
            pb_rate = median_rate(pb, rounds, seconds)
            rep.add("  peer: pybreaker (Redis storage), closed", f"{pb_rate:,.0f}/s",
                    f"{pb_rate / bare:.2f}x bare; distlb {cb_rate / pb_rate:.1f}x pybreaker")

        lb_rates: dict[str, float] = {}
        for mode in ("sync", "deferred"):
            lb = LoadBalancer(r, "bench", RoundRobinBalancer(), prefix=prefix, release=mode)
            if mode == "sync":
                for i in range(5):
                    lb.add_backend(Backend(f"node{i}", f"10.0.0.{i}:8080"))
            for _ in range(20):              # every backend's breaker seen once
                lb.execute(lambda b: b.id)
            before, commands = lb.store_stats.calls, _server_commands(r)
            for _ in range(100):
                lb.execute(lambda b: b.id)
            trips = (lb.store_stats.calls - before) / 100
            per_call = (_server_commands(r) - commands) / 100
            lb_rate, lb_ratio = paired(lambda lb=lb: lb.execute(lambda b: b.id), bare_call,
                                       rounds, seconds)
            lb_rates[mode] = lb_rate
            what = ("lease + release/record" if mode == "sync" else
                    "lease; the release rides on the next call")
            rep.add(f"LoadBalancer.execute (no-op), release={mode}, {trips:g} round trips",
                    f"{lb_rate:,.0f}/s",
                    f"{lb_ratio:.2f}x bare ({what}; {per_call:.1f} server commands)")
            lb.close()
        ex_us = execute_python(url, prefix, rounds)
        rep.add("client Python: LoadBalancer.execute (no-op), release=sync", f"{ex_us:.1f} us/call",
                f"(stub connection; two pool.lua calls; bare EVALSHA {floor_py:.1f} us each)")

        for mode in ("sync", "deferred"):
            async def alb_of(ar: Any, mode: str = mode) -> Any:
                alb = aio.LoadBalancer(ar, "bench", RoundRobinBalancer(), prefix=prefix,
                                       release=mode)
                for _ in range(20):
                    await alb.execute(lambda b: b.id)

                async def done() -> None:
                    await alb.flush_releases()
                    await alb.aclose()
                return (lambda: alb.execute(lambda b: b.id)), done

            a_rate = asyncio.run(run_async(alb_of, 64))
            rep.add(f"aio LoadBalancer.execute (no-op), release={mode}, 64 tasks",
                    f"{a_rate:,.0f}/s", f"{a_rate / lb_rates[mode]:.2f}x sync")

        delays = [trip_propagation(url, watchers=3) for _ in range(1 if args.quick else 3)]
        worst = max(max(d) for d in delays) * 1000
        med = statistics.median(x for d in delays for x in d) * 1000
        rep.add("breaker trip seen open by 3 other processes", f"{med:.1f} ms median",
                f"{worst:.1f} ms worst (pub/sub event)")

        for label, budget in (("no budget", None),
                              ("20% budget", RetryBudget(r, "storm", ratio=0.2,
                                                         min_retries_per_s=10, window_s=10,
                                                         prefix=prefix))):
            multiplier = retry_storm(budget, requests=500 if args.quick else 2000)
            rep.add(f"retry storm on a dead backend, 3 attempts, {label}",
                    f"{multiplier:.2f}x load", "attempts per original request")

        admitted, expected = multiprocess_accuracy(url, 1.0 if args.quick else 3.0)
        rep.add("4 processes on one 500/s burst-50 limit", f"{admitted} admitted",
                f"{admitted / expected:.4f} of rate x s + burst ({expected:.0f})")
        r.close()

    strategy_benchmarks(rep, quick=args.quick)
    return 0


def peer_limiters(rep: Report, url: str, prefix: str, bare_call: Callable[[], Any],
                  rounds: int, seconds: float, distlb_ratio: float) -> None:
    """The peer limiters on the same server, each paired with the bare call like distlb."""
    for label, (make, semantics) in _peers.LIMITERS.items():
        decide = _peers.available(make, url, prefix)
        if decide is None:
            rep.add(f"  peer: {label}", "not installed", "pip install '.[bench]'")
            continue
        rate, ratio = paired(decide, bare_call, rounds, seconds)
        rep.add(f"  peer: {label}", f"{rate:,.0f}/s",
                f"{ratio:.2f}x bare; distlb bucket {distlb_ratio / ratio:.2f}x it ({semantics})")


def deny_path(rep: Report, r: redis.Redis, url: str, prefix: str,
              bare_call: Callable[[], Any], rounds: int, seconds: float) -> None:
    """Decisions per second under a flood: a 100/s limit offered far more than 10x that.

    distlb answers a denial the store gave locally until its retry_after (``source=
    "cache"``); the peers ask their store for every request. Then a paced 10x overload
    (1,000 requests/s on the 100/s limit): store round trips per request, and admitted
    against the ideal rate x s + burst (exactness kept).
    """
    tb = TokenBucket(r, "deny", rate_per_s=100, burst=10, prefix=prefix)
    rate, ratio = paired(tb.try_acquire, bare_call, rounds, seconds)
    rep.add("deny path: TokenBucket at 100/s, flooded", f"{rate:,.0f}/s",
            f"{ratio:.2f}x bare (denials answered from the cache)")
    paced = TokenBucket(r, "paced", rate_per_s=100, burst=10, prefix=prefix)
    n, admitted, start = 0, 0, time.perf_counter()
    calls = paced.store_stats.calls
    while (now := time.perf_counter()) < start + 2 * seconds:
        if n < (now - start) * 1000:
            n += 1
            admitted += paced.try_acquire().allowed
        else:
            time.sleep(0.0002)
    elapsed = time.perf_counter() - start
    trips = (paced.store_stats.calls - calls) / n
    ideal = 100 * elapsed + 10
    rep.add("deny path: 10x overload (1,000/s on 100/s)", f"{trips:.2f} trips/req",
            f"admitted {admitted} = {admitted / ideal:.3f} of ideal; peers: 1 trip/req")
    for label, (make, _) in _peers.LIMITERS.items():
        try:
            decide = make(url, f"{prefix}deny", 100, 10)
        except ImportError:
            continue
        rate, ratio = paired(decide, bare_call, rounds, seconds)
        rep.add(f"  peer deny path: {label}", f"{rate:,.0f}/s", f"{ratio:.2f}x bare")


def ring_benchmarks(rep: Report, *, quick: bool) -> None:
    """Ring and Maglev keys per second through each public path, as ratios to uhashring
    timed in alternation with them (``python -m benchmarks --rings`` runs only these)."""
    for n in (100, 1000):
        figures = _strategies.rings_vs_uhashring(n, 1 if quick else 5)
        theirs = figures.pop("uhashring get_node()", None)
        for name, rate in figures.items():
            rep.add(f"{name}, {n} backends", f"{rate:,.0f}/s",
                    f"{rate / theirs:.2f}x uhashring md5 ({theirs:,.0f}/s)" if theirs
                    else "uhashring not installed (pip install '.[bench]')")


def strategy_benchmarks(rep: Report, *, quick: bool) -> None:
    """Local strategies: no server involved."""
    print()
    seconds = 0.05 if quick else 0.3
    sizes = (10, 100, 1000)
    print(f"  {'selections/s':<40}" + "".join(f"{n:>12} backends" for n in sizes))
    for name, make in _strategies.STRATEGIES.items():
        figures = [_strategies.selections_per_s(make, n, seconds) for n in sizes]
        print(f"  {name:<40}" + "".join(f"{f:>21,.0f}" for f in figures), flush=True)
    print()
    ring_benchmarks(rep, quick=quick)
    for label, make in (("ring", _strategies.ConsistentHashBalancer),
                        ("maglev", _strategies.MaglevBalancer),
                        ("rendezvous", _strategies.RendezvousHashBalancer)):
        moved = _strategies.key_movement(make, 10)
        rep.add(f"keys moved adding an 11th backend ({label})", f"{moved:.1%}",
                f"ideal 1/11 = {1 / 11:.1%}")
    requests = 5_000 if quick else 20_000
    for label, make in (("round robin", _strategies.RoundRobinBalancer),
                        ("least connections", _strategies.LeastConnectionsBalancer),
                        ("adaptive", _strategies.AdaptiveBalancer),
                        ("peak EWMA (latency-aware)", _strategies.PeakEwmaBalancer)):
        mean, p99 = _strategies.simulate(make, requests=requests)
        rep.add(f"one slow backend of 5: {label}", f"{mean:.1f} ms mean", f"p99 {p99:.1f} ms")
    routing_benchmarks(rep, quick=quick)


def routing_benchmarks(rep: Report, *, quick: bool) -> None:
    """Locality and cost strategies: picks per second, and cost saved against round robin."""
    seconds = 0.05 if quick else 0.3
    for name, make in _routing.ROUTING_STRATEGIES.items():
        for fresh in (False, True):
            figures = [_routing.selections_per_s(make, n, seconds, fresh=fresh)
                       for n in (10, 100, 1000)]
            rep.add(f"{name}, {'new' if fresh else 'same'} snapshot", f"{figures[0]:,.0f}/s",
                    f"{figures[1]:,.0f}/s at 100 backends, {figures[2]:,.0f}/s at 1000")
    runs = {label: _routing.simulate_cost(make, requests=5_000 if quick else 20_000)
            for label, make in _routing.COST_STRATEGIES.items()}
    rr = runs["round robin"]
    for label, run in runs.items():
        rep.add(f"priced fleet of 6, 400/s: {label}", f"{run.cost_per_request:.2f}/request",
                f"{1 - run.cost_per_request / rr.cost_per_request:+.0%} cost saved vs round "
                f"robin; {run.mean_ms:.1f} ms mean, p99 {run.p99_ms:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
