"""Worker functions for the pool-admission tests (priority, metadata), run in real child
processes (spawn). Only strings, numbers and queues cross the process boundary."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

from tests.workers import make_client

#: The pool limit the priority workers contend for, and how long they run.
RATE, BURST, SECONDS = 40.0, 8.0, 5.0
LEVELS = (0, 5, 9)


def _paced_levels(per_s: float, seed: int, barrier: Any,
                  decide: Callable[[int], str]) -> dict[str, Any]:
    """Call ``decide(level)`` ``per_s`` times a second (paced, not flooded) for SECONDS,
    cycling through LEVELS in a shuffled order; count its answers ("admitted", "denied",
    "cached": a denial the cache answered, counted as denied too) per level."""
    rng = random.Random(seed)
    counts: dict[str, dict[int, int]] = {k: {p: 0 for p in LEVELS}
                                         for k in ("admitted", "denied", "cached")}
    barrier.wait()
    start = time.time()
    i = 0
    last = start
    while True:
        due = start + i / per_s
        now = time.time()
        if due >= start + SECONDS:
            break
        if due > now:
            time.sleep(due - now)
        order = list(LEVELS)
        rng.shuffle(order)
        for p in order:
            last = time.time()
            answer = decide(p)
            counts[answer][p] += 1
            if answer == "cached":
                counts["denied"][p] += 1
            i += 1
    return {**counts, "start": start, "end": last}


def mixed_priorities(target: dict[str, Any], prefix: str, per_s: float, seed: int,
                     barrier: Any, out: Any) -> None:
    """Call the pool through ``execute`` with each of LEVELS (``_paced_levels``); report
    admitted and denied per level."""
    from distlb import Backend, BackendExists, Limit, LoadBalancer, RateLimited
    from distlb.strategies import Context

    lb = LoadBalancer(make_client(target), "prio", prefix=prefix, breaker=None,
                      rate_limit=Limit(RATE, BURST))
    with contextlib.suppress(BackendExists):      # another worker added it
        lb.add_backend(Backend("n1", "10.0.0.1:80"))
    lb.backends()

    def decide(p: int) -> str:
        try:
            lb.execute(lambda b: b.id, ctx=Context(priority=p))
            return "admitted"
        except RateLimited:
            return "denied"
    try:
        out.put(_paced_levels(per_s, seed, barrier, decide))
    finally:
        lb.close()


def follow_metadata(target: dict[str, Any], prefix: str, commands: Any, out: Any) -> None:
    """A process in zone "a": for each command (the backend expected local), wait until
    its view shows that backend in zone "a", then report where 20 calls went."""
    from distlb import LoadBalancer, LocalityAwareBalancer

    lb = LoadBalancer(make_client(target), "geo", LocalityAwareBalancer(region="eu", zone="a"),
                      prefix=prefix, breaker=None, refresh_s=0.2)
    try:
        while True:
            expected = commands.get(timeout=120)
            if expected is None:
                return
            deadline = time.monotonic() + 60
            while not any(b.id == expected and b.metadata.get("zone") == "a"
                          for b in lb.backends()):
                if time.monotonic() > deadline:
                    out.put({"error": "metadata change never seen"})
                    return
                time.sleep(0.01)
            out.put(sorted({lb.execute(lambda b: b.id) for _ in range(20)}))
    finally:
        lb.close()


def shaper_mixed_priorities(target: dict[str, Any], prefix: str, per_s: float, seed: int,
                            barrier: Any, out: Any) -> None:
    """As ``mixed_priorities``, through a ``TrafficShaper``'s global limit
    (``try_acquire(priority=p)``); report admitted, denied (and how many of those the
    denial cache answered) per level."""
    from distlb import Limit, TrafficShaper

    shaper = TrafficShaper(make_client(target), "prio", global_limit=Limit(RATE, BURST),
                           prefix=prefix)

    def decide(p: int) -> str:
        d = shaper.try_acquire(priority=p)
        return "admitted" if d.allowed else "cached" if d.source == "cache" else "denied"
    out.put(_paced_levels(per_s, seed, barrier, decide))
