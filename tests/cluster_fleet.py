"""Shared by the cluster failover, resharding and pub/sub node-loss tests: placing
entities on chosen shards, running a fleet of worker processes around an event, and
reading the figures out of their reports."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.crc import key_slot

from distlb import (
    AdaptiveCircuitBreaker,
    Backend,
    LeakyBucket,
    LoadBalancer,
    RetryBudget,
    TokenBucket,
    TrafficShaper,
    _keys,
)
from tests import cluster_workers as cw

ctx = mp.get_context("spawn")
#: Each primitive's key kind, from the classes themselves (so a renamed kind cannot move an
#: entity off the shard a test means to kill).
KIND_OF = {"bucket": TokenBucket.kind, "leaky": LeakyBucket.kind, "shaper": TrafficShaper.kind,
           "breaker": AdaptiveCircuitBreaker.kind, "budget": RetryBudget.kind,
           "pool": LoadBalancer.kind}


def slot_of(prefix: str, kind: str, name: str) -> int:
    return int(key_slot(_keys.entity(prefix, kind, _keys.escape(name)).encode()))


def pick(prefix: str, kind: str, base: str, ok: Callable[[int], bool]) -> str:
    """The first name ``base-<i>`` whose entity lands on a slot ``ok`` accepts."""
    for i in range(100_000):
        name = f"{base}-{i}"
        if ok(slot_of(prefix, kind, name)):
            return name
    raise AssertionError(f"no name for {kind} {base}")


def place(prefix: str, groups: dict[str, Callable[[int], bool]],
          kinds: tuple[str, ...] = tuple(cw.POLICIES)) -> dict[str, str]:
    """``{"<kind>@<group>": name}`` for every kind and group."""
    return {f"{kind}@{group}": pick(prefix, KIND_OF[kind], f"{kind}{group}", ok)
            for group, ok in groups.items() for kind in kinds}


def backend_ids(prefix: str, pool: str, wanted: list[Callable[[int], bool]]) -> list[str]:
    """One backend id per predicate, its breaker (``<pool>/<id>``) on a slot it accepts."""
    ids = []
    for i, ok in enumerate(wanted):
        for j in range(100_000):
            bid = f"b{i}-{j}"
            if ok(slot_of(prefix, "cb", f"{pool}/{bid}")):
                ids.append(bid)
                break
    return ids


def register(client: Any, prefix: str, pool: str, ids: list[str]) -> None:
    lb = LoadBalancer(client, pool, prefix=prefix, subscribe=False)
    for i, bid in enumerate(ids):
        lb.add_backend(Backend(bid, f"127.0.0.1:{9100 + i}"))
    lb.close()


def run_fleet(target: dict[str, Any], prefix: str, placement: dict[str, str],
              duration_s: float, event: Callable[[], Any], *, lead_s: float = 1.5,
              processes: int = cw.PROCESSES) -> tuple[list[dict[str, Any]], Any]:
    """Start the fleet, run ``event()`` ``lead_s`` into the run, gather every report."""
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=cw.drive, args=(target, prefix, placement, duration_s,
                                                 barrier, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)
        time.sleep(lead_s)
        marker = event()
        reports = [out.get(timeout=duration_s + 120) for _ in range(processes)]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * processes
    return reports, marker


def errors(reports: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {name: t["errors"] for r in reports for name, t in r["tracks"].items()
            if t["n_errors"]}


def on_policy_s(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Per track, the longest time one process spent on its failure policy (seconds)."""
    out: dict[str, float] = {}
    for r in reports:
        for name, t in r["tracks"].items():
            total, since = 0.0, None
            for at, src in t["changes"]:
                if src == "policy" and since is None:
                    since = at
                elif src != "policy" and since is not None:
                    total += at - since
                    since = None
            if since is not None:
                total += r["ended"] - since
            out[name] = max(out.get(name, 0.0), total)
    return out


def back_after(reports: list[dict[str, Any]], at: float) -> dict[str, float]:
    """Per track that fell back, the slowest process's time from ``at`` (e.g. the
    promotion) to its first store decision after its last fallback (<= 0: before)."""
    out: dict[str, float] = {}
    for r in reports:
        for name, t in r["tracks"].items():
            changes = t["changes"]
            assert changes and changes[-1][1] != "policy", \
                f"{name} still on its failure policy at the end"
            left = [a for a, src in changes if src == "policy"]
            if not left:
                continue
            back = min(a for a, src in changes if src != "policy" and a > max(left))
            out[name] = max(out.get(name, -1e9), back - at)
    return out


def fallbacks(reports: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reports:
        for name, t in r["tracks"].items():
            out[name] = out.get(name, 0) + t["counts"]["policy"]
    return out


def store_admitted(reports: list[dict[str, Any]], track: str) -> int:
    return sum(r["tracks"][track]["admitted"]["store"] for r in reports)


def final_connections(client: Any, prefix: str, pool: str, deadline_s: float = 30.0) -> int:
    """The pool's connection count, once it is 0 or the deadline passes."""
    lb = LoadBalancer(client, pool, prefix=prefix, subscribe=False)
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            conns = lb.get_statistics().connections
            if conns == 0 or time.monotonic() > deadline:
                return conns
            time.sleep(0.1)
    finally:
        lb.close()


def slowest_call_s(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Per track, the longest one call made its caller wait (any process)."""
    out: dict[str, float] = {}
    for r in reports:
        for name, s in r["slowest_call_s"].items():
            out[name] = max(out.get(name, 0.0), s)
    return out


def fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in sorted(d.items()))


__all__ = ["redis"]
