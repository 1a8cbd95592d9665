"""``distlb demo``: worker processes share one rate limit through the store; watch it hold.

Each worker process hammers one ``TrafficShaper`` as fast as it can on behalf of
two clients: ``alice`` (capped by a per-client limit) and ``bob`` (only the
global limit). The parent prints per-worker and total admitted rates every
second, then checks the totals against what the limits allow.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from distlb.shaping import Limit, TrafficShaper

REPORT_EVERY_S = 0.25


@dataclass(frozen=True)
class DemoConfig:
    url: str
    workers: int = 4
    duration_s: float = 8.0
    rate_per_s: float = 500.0
    burst: float = 50.0
    prefix: str = "distlb-demo"

    @property
    def client_limit(self) -> Limit:
        return Limit(self.rate_per_s / 5, self.burst / 5)


def _worker(cfg: DemoConfig, index: int, barrier: Any, out: Any) -> None:
    shaper = TrafficShaper(redis.Redis.from_url(cfg.url), "demo",
                           global_limit=Limit(cfg.rate_per_s, cfg.burst), prefix=cfg.prefix)
    shaper.peek("alice")
    barrier.wait()
    start = time.time()
    deadline = start + cfg.duration_s
    counts = {"alice": 0, "bob": 0, "denied": 0}
    next_report = start + REPORT_EVERY_S
    while (now := time.time()) < deadline:
        for client in ("alice", "bob"):
            if shaper.try_acquire(client).allowed:
                counts[client] += 1
            else:
                counts["denied"] += 1
        if now >= next_report:
            out.put((index, dict(counts), False))
            next_report += REPORT_EVERY_S
    out.put((index, dict(counts), True))


class _Painter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.color = stream.isatty() and "NO_COLOR" not in os.environ

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)


def run_demo(cfg: DemoConfig, stream: TextIO = sys.stdout) -> bool:
    """Run the demo; returns whether every check passed."""
    p = _Painter(stream)
    setup = TrafficShaper(redis.Redis.from_url(cfg.url), "demo", prefix=cfg.prefix)
    setup.reset()
    setup.reset_client("alice")
    setup.reset_client("bob")
    setup.set_client_rate_limit("alice", cfg.client_limit.rate_per_s, cfg.client_limit.burst)
    p.line(p.paint("distlb demo", "1") + f": {cfg.workers} worker processes share one global "
           f"limit of {cfg.rate_per_s:g}/s (burst {cfg.burst:g}) through {cfg.url}")
    p.line(f"client 'alice' also has her own limit of {cfg.client_limit.rate_per_s:g}/s "
           f"(burst {cfg.client_limit.burst:g}), set once and seen by every worker")

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cfg.workers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(cfg, i, barrier, out), daemon=True)
             for i in range(cfg.workers)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=60)
    start = time.time()
    latest: dict[int, dict[str, int]] = {i: {"alice": 0, "bob": 0, "denied": 0}
                                         for i in range(cfg.workers)}
    shown: dict[int, int] = {i: 0 for i in range(cfg.workers)}
    done: set[int] = set()
    next_paint = start + 1.0
    header = "  t   " + "".join(f"w{i:<7}" for i in range(cfg.workers)) + "total/s   limit/s"
    p.line(p.paint(header, "2"))
    while len(done) < cfg.workers:
        try:
            index, counts, final = out.get(timeout=0.2)
            latest[index] = counts
            if final:
                done.add(index)
        except Exception:  # queue.Empty; workers may still be starting up
            if not any(proc.is_alive() for proc in procs) and len(done) < cfg.workers:
                p.line(p.paint("a worker died", "31"))
                return False
        if time.time() >= next_paint and len(done) < cfg.workers:
            per = {i: latest[i]["alice"] + latest[i]["bob"] - shown[i] for i in latest}
            shown = {i: latest[i]["alice"] + latest[i]["bob"] for i in latest}
            total = sum(per.values())
            cells = "".join(f"{per[i]:<8}" for i in range(cfg.workers))
            ok = total <= cfg.rate_per_s * 1.02 + cfg.burst
            rate = p.paint(f"{total:<10}", "32" if ok else "31")
            p.line(f"{next_paint - start:3.0f}s  {cells}{rate}{cfg.rate_per_s:g}")
            next_paint += 1.0
    for proc in procs:
        proc.join(5)

    alice = sum(c["alice"] for c in latest.values())
    total = alice + sum(c["bob"] for c in latest.values())
    denied = sum(c["denied"] for c in latest.values())
    allowed_total = cfg.rate_per_s * cfg.duration_s + cfg.burst
    allowed_alice = cfg.client_limit.rate_per_s * cfg.duration_s + cfg.client_limit.burst
    checks = [
        (f"global limit held: admitted {total} of {total + denied} requests; the limit allows "
         f"{allowed_total:.0f} in {cfg.duration_s:g}s (within 1%)",
         0.99 * allowed_total <= total <= 1.01 * allowed_total),
        (f"alice's own limit held: {alice} admitted; her limit allows {allowed_alice:.0f} "
         f"(at most 1% over)", alice <= 1.01 * allowed_alice),
        ("every worker was admitted some requests (the limit is shared, not per process)",
         all(c["alice"] + c["bob"] > 0 for c in latest.values())),
    ]
    p.line()
    for text, passed in checks:
        mark = p.paint("PASS", "32") if passed else p.paint("FAIL", "31")
        p.line(f"  {mark}  {text}")
    return all(ok for _, ok in checks)
