"""Scale-out on Redis/Valkey Cluster: decisions per second and server CPU per decision for
1, 3 and 6 primaries, many entities spread over the slots and one hot entity.

    python -m benchmarks.scale             # about a minute
    python -m benchmarks.scale --quick

On one small machine the clients and every node share the same cores, so the total
rate says more about the machine than about the cluster. What carries over to real
hosts is measured on the servers: the CPU each decision costs a primary (``INFO
commandstats``) and how evenly the decisions spread over the primaries. From those:
a primary at one busy core serves about ``1e6 / us_per_decision`` decisions a
second, a cluster of N primaries about N times that when the entities are many,
and one hot entity (one slot, one primary) never more than one primary's share.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from typing import Any

import redis
import redis.asyncio.cluster

import distlb.aio as aio
from distlb.embedded import EmbeddedCluster


def _drive(nodes: list[tuple[str, int]], prefix: str, entities: int, tasks: int,
           seconds: float, barrier: Any, out: Any) -> None:
    """One worker process: ``tasks`` concurrent callers over ``entities`` buckets."""
    async def main() -> int:
        client = redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes])
        buckets = [aio.TokenBucket(client, f"e{i}", rate_per_s=1e9, burst=1e9, prefix=prefix)
                   for i in range(entities)]
        for b in buckets:
            await b.peek()
        barrier.wait()
        stop = time.perf_counter() + seconds
        done = 0

        async def loop(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                await buckets[i % entities].try_acquire()
                i += tasks
                done += 1

        await asyncio.gather(*[loop(k) for k in range(tasks)])
        await client.aclose()
        return done

    out.put(asyncio.run(main()))


def _server_stats(nodes: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """(script calls, usec) per node since the last reset."""
    out = []
    for host, port in nodes:
        r = redis.Redis(host=host, port=port)
        stats = r.info("commandstats")
        calls = usec = 0
        for name in ("cmdstat_evalsha", "cmdstat_eval"):
            if name in stats:
                calls += int(stats[name]["calls"])
                usec += int(stats[name]["usec"])
        out.append((calls, usec))
        r.close()
    return out


def run(masters: int, processes: int, entities: int, tasks: int,
        seconds: float) -> dict[str, float]:
    with EmbeddedCluster(masters=masters) as cluster:
        nodes = [(h, int(p)) for h, p in cluster.startup_nodes]
        prefix = f"scale{uuid.uuid4().hex[:6]}"
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(processes + 1), ctx.Queue()
        procs = [ctx.Process(target=_drive, args=(nodes, prefix, entities, tasks, seconds,
                                                 barrier, out)) for _ in range(processes)]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        for host, port in nodes:
            redis.Redis(host=host, port=port).config_resetstat()
        t0 = time.perf_counter()
        total = sum(out.get(timeout=seconds + 120) for _ in procs)
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join(30)
        stats = _server_stats(nodes)
    calls = [c for c, _ in stats]
    usec = sum(u for _, u in stats)
    busiest = max(calls) / (sum(calls) / len(calls)) if sum(calls) else 0.0
    return {"rate": total / elapsed, "us_per_decision": usec / max(1, sum(calls)),
            "busiest_share": busiest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    seconds = 1.5 if args.quick else 4.0
    print("primaries  entities  decisions/s (this machine)  server us/decision  "
          "busiest primary / mean  => one primary at 1 core  cluster at 1 core each")
    for masters in (1, 3, 6):
        for entities in (256, 1):
            figures = [run(masters, processes=2, entities=entities, tasks=64, seconds=seconds)
                       for _ in range(1 if args.quick else 2)]
            f = {k: statistics.median(x[k] for x in figures) for k in figures[0]}
            per_primary = 1e6 / f["us_per_decision"] if f["us_per_decision"] else 0.0
            # the busiest primary saturates first: the cluster holds masters / busiest of it
            cluster = per_primary * masters / f["busiest_share"] if f["busiest_share"] else 0
            print(f"{masters:>9}  {entities:>8}  {f['rate']:>26,.0f}  "
                  f"{f['us_per_decision']:>18.1f}  {f['busiest_share']:>22.2f}  "
                  f"{per_primary:>24,.0f}/s  {cluster:>20,.0f}/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
