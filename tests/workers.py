"""Worker functions run in real child processes (multiprocessing, spawn) by the tests.

Each builds its own client from a plain description, so nothing but strings and
numbers crosses the process boundary, as between real hosts.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import redis
import redis.cluster

from distlb import Limit, PriorityLimiter, TokenBucket, TrafficShaper


def make_client(target: dict[str, Any]) -> Any:
    if target.get("cluster"):
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target["cluster"]]
        return redis.cluster.RedisCluster(startup_nodes=nodes)
    return redis.Redis.from_url(target["url"])


def hammer_bucket(target: dict[str, Any], prefix: str, rate: float, burst: float,
                  duration_s: float, barrier: Any, out: Any) -> None:
    tb = TokenBucket(make_client(target), "shared", rate_per_s=rate, burst=burst, prefix=prefix)
    tb.peek()  # connect and load the script before the clock starts
    barrier.wait()
    start = time.time()
    deadline = start + duration_s
    admitted = attempts = 0
    last = now = start
    while now < deadline:
        last = now
        attempts += 1
        admitted += tb.try_acquire().allowed
        now = time.time()
    # "end" is when the last decision was asked for: the bucket refills only up to the
    # last charge, and on a busy machine the final call alone can take tens of ms.
    out.put({"admitted": admitted, "attempts": attempts, "start": start, "end": last})


def hammer_shaper(target: dict[str, Any], prefix: str, duration_s: float, barrier: Any,
                  out: Any) -> None:
    """Ask for clients "a" and "b" in turn until ``duration_s`` has passed; report the
    counts admitted and when each call started (``starts``, one clock per machine) and
    the last one ended (``end``): the test bounds the count by the window the fleet
    actually ran, stalls included."""
    shaper = TrafficShaper(make_client(target), "api", global_limit=Limit(GLOBAL_RATE, 10),
                           client_limit=Limit(1000, 100), prefix=prefix)
    shaper.peek("a")
    barrier.wait()
    start = time.time()
    deadline = start + duration_s
    counts: dict[str, Any] = {"a": 0, "b": 0}
    starts: list[float] = []
    now = start
    while now < deadline:
        for c in ("a", "b"):
            starts.append(time.time())
            counts[c] += shaper.try_acquire(c).allowed
        now = time.time()
    out.put({**counts, "start": start, "end": now, "starts": starts})


#: hammer_shaper's global limit: low enough that four processes on two busy cores still ask
#: for more than it at every moment, so the count admitted is exact.
GLOBAL_RATE = 100.0


def queue_at_priority(target: dict[str, Any], prefix: str, level: int, threads: int,
                      duration_s: float, after_queued: int, barrier: Any, out: Any) -> None:
    """``threads`` waiters at ``level`` for ``duration_s``; with ``after_queued``, they start
    only once that many others wait in the queue (a condition, not a head start in time)."""
    cfg = dict(rate_per_s=40, burst=1, levels=10, aging_s=1000.0, prefix=prefix)
    admitted: list[float] = []
    lock = threading.Lock()
    barrier.wait()
    deadline = time.time() + duration_s      # the same end for every level
    if after_queued:
        client, limit = make_client(target), time.time() + 60
        while client.zcard(f"{prefix}:{{pq:pq}}:queue") < after_queued:
            if time.time() > limit:
                raise TimeoutError(f"fewer than {after_queued} waiters queued in 60 s")
            time.sleep(0.005)

    def loop() -> None:
        pq = PriorityLimiter(make_client(target), "pq", **cfg)  # type: ignore[arg-type]
        while time.time() < deadline:
            try:
                pq.acquire(level, timeout_s=max(0.0, deadline - time.time()))
            except Exception:
                return
            with lock:
                admitted.append(time.time())

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put({"level": level, "admitted": len(admitted)})


def ask_backend(port: int) -> str:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"req\n")
        return s.makefile().readline().strip()


def call_through_breaker(target: dict[str, Any], prefix: str, port: int, cfg: dict[str, Any],
                         threads: int, duration_s: float, barrier: Any, out: Any) -> None:
    """Call the backend through one shared breaker until the time is up; count outcomes."""
    _call_through_breaker(target, prefix, port, cfg, threads, duration_s, barrier, out)


def call_until_ok(target: dict[str, Any], prefix: str, port: int, cfg: dict[str, Any],
                  threads: int, oks: int, max_s: float, barrier: Any, out: Any) -> None:
    """Like call_through_breaker, but stop once this process has had ``oks`` successful
    calls (or after ``max_s``, a generous deadline): however slowly a busy machine runs the
    workers, each one lives until the breaker let it through again."""
    _call_through_breaker(target, prefix, port, cfg, threads, max_s, barrier, out, oks)


def _call_through_breaker(target: dict[str, Any], prefix: str, port: int, cfg: dict[str, Any],
                          threads: int, duration_s: float, barrier: Any, out: Any,
                          stop_after_ok: int = 0) -> None:
    from distlb import CircuitBreaker, CircuitOpen

    counts = {"ok": 0, "failed": 0, "refused": 0}
    lock = threading.Lock()
    barrier.wait()
    deadline = time.time() + duration_s

    def loop() -> None:
        cb = CircuitBreaker(make_client(target), "backend", prefix=prefix, **cfg)

        def request() -> str:
            reply = ask_backend(port)
            if reply != "ok":
                raise ConnectionError(reply)
            return reply

        while time.time() < deadline and not (stop_after_ok and counts["ok"] >= stop_after_ok):
            try:
                cb.call(request)
                outcome = "ok"
            except CircuitOpen:
                outcome = "refused"
                time.sleep(0.002)
            except ConnectionError:
                outcome = "failed"
            with lock:
                counts[outcome] += 1

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(counts)


def take_probe_and_die(target: dict[str, Any], prefix: str, cfg: dict[str, Any],
                       barrier: Any, out: Any) -> None:
    """Take the half-open probe permit, report it, then die without returning it."""
    import os
    import signal

    from distlb import CircuitBreaker

    cb = CircuitBreaker(make_client(target), "backend", prefix=prefix, **cfg)
    barrier.wait()
    attempt = cb.can_attempt()
    out.put({"permit": attempt.permit})
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGKILL)


def retry_against_dead_backend(target: dict[str, Any], prefix: str, requests: int,
                               barrier: Any, out: Any) -> None:
    """Make `requests` calls that always fail, 3 attempts each, under one shared budget."""
    from distlb import RetryBudget, RetryBudgetExhausted, RetryPolicy

    budget = RetryBudget(make_client(target), "dead", ratio=0.2, min_retries_per_s=5,
                         window_s=30, prefix=prefix)
    policy = RetryPolicy.fixed(0, max_attempts=3).with_budget(budget)
    attempts = 0

    def dead() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("dead")

    barrier.wait()
    for _ in range(requests):
        with contextlib.suppress(ConnectionError, RetryBudgetExhausted):
            policy.execute(dead)
    budget.flush()
    out.put({"requests": requests, "attempts": attempts})


def balance(target: dict[str, Any], prefix: str, duration_s: float, barrier: Any,
            out: Any) -> None:
    """Call the pool through execute() with 4 threads until the time is up."""
    from distlb import (
        BreakerSettings,
        LeastConnectionsBalancer,
        LoadBalancer,
        RetryBudget,
        RetryPolicy,
    )
    from tests.backends import call

    client = make_client(target)
    budget = RetryBudget(client, "lb", ratio=0.5, min_retries_per_s=20, prefix=prefix)
    lb = LoadBalancer(client, "api", LeastConnectionsBalancer(), prefix=prefix,
                      retry_policy=RetryPolicy.fixed(0, max_attempts=3).with_budget(budget),
                      breaker=BreakerSettings(failure_threshold=3, open_timeout_s=60),
                      refresh_s=0.2)
    counts: dict[str, int] = {}
    failures = 0
    lock = threading.Lock()
    barrier.wait()
    deadline = time.time() + duration_s

    def loop() -> None:
        nonlocal failures
        while time.time() < deadline:
            try:
                answer = lb.execute(lambda b: call(b.address, 1.0))
            except Exception:
                with lock:
                    failures += 1
                continue
            with lock:
                counts[answer] = counts.get(answer, 0) + 1

    ts = [threading.Thread(target=loop) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put({"counts": counts, "failures": failures})


def hold_leases_and_die(target: dict[str, Any], prefix: str, barrier: Any, out: Any) -> None:
    """Take three connection leases, report, and get killed while holding them."""
    import os
    import signal

    from distlb import LoadBalancer

    lb = LoadBalancer(make_client(target), "api", prefix=prefix, lease_ttl_s=1.0)
    barrier.wait()
    held = [lb.connection().__enter__() for _ in range(3)]
    out.put({"held": [b.id for b in held]})
    out.close()
    out.join_thread()         # the queue writes from a thread: flush before dying
    os.kill(os.getpid(), signal.SIGKILL)
