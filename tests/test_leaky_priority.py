"""LeakyBucket spacing and PriorityLimiter ordering, single process."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import redis

from distlb import ConfigError, LeakyBucket, PriorityLimiter, RateLimited

pytestmark = pytest.mark.lua


def test_leaky_slots_are_evenly_spaced(client: redis.Redis, prefix: str) -> None:
    lb = LeakyBucket(client, "out", rate_per_s=20, capacity=5, prefix=prefix)
    times, ds = [], []
    for _ in range(6):
        t0 = time.monotonic()
        ds.append(lb.try_acquire())
        times.append((t0, time.monotonic()))
    assert [d.allowed for d in ds] == [True] * 5 + [False]
    delays = [d.delay_s for d in ds[:5]]
    assert delays[0] == 0
    # Slots are 50 ms apart; each delay is counted from its own call, so a gap is 50 ms less
    # the time between two calls, which this process bounds (long on a busy machine).
    for i, (a, b) in enumerate(itertools.pairwise(delays)):
        between = times[i + 1][1] - times[i][0]
        assert 0.05 - between - 0.001 < b - a <= 0.0501, (delays, times)
    drained = 20 * (times[4][1] - times[0][0])          # left the queue while we were calling
    assert 5 - drained - 0.05 <= ds[4].queued <= 5.0001
    assert 0 < ds[5].retry_after_s <= 0.05


def test_leaky_acquire_sleeps_for_its_slot(r: redis.Redis, prefix: str) -> None:
    lb = LeakyBucket(r, "out", rate_per_s=50, capacity=10, prefix=prefix)
    t0 = time.monotonic()
    for _ in range(6):
        lb.acquire()
    # Six slots 20 ms apart: the last one starts ~100 ms after the first (later on a busy
    # machine, never sooner).
    assert 0.09 < time.monotonic() - t0 < 5


def test_leaky_cost_counts_units_and_expires(r: redis.Redis, prefix: str) -> None:
    lb = LeakyBucket(r, "bytes", rate_per_s=1000, capacity=2000, prefix=prefix)
    assert lb.try_acquire(1500).delay_s == 0
    d = lb.try_acquire(400)
    assert d.allowed and 1.0 < d.delay_s <= 1.5     # 1.5 s less the time between the calls
    assert not lb.try_acquire(400).allowed
    assert lb.peek(100).allowed
    assert set(r.hgetall(lb.key)) == {b"next_us", b"rate", b"capacity"}
    assert 2000 < r.pttl(lb.key) <= 2900
    with pytest.raises(ConfigError, match="cost: must be at most capacity"):
        lb.try_acquire(2001)
    lb.reset()
    assert lb.try_acquire(2000).delay_s == 0


def test_leaky_acquire_raises_when_queue_stays_full(r: redis.Redis, prefix: str) -> None:
    lb = LeakyBucket(r, "out", rate_per_s=1, capacity=1, prefix=prefix)
    lb.try_acquire()
    with pytest.raises(RateLimited):
        lb.acquire(timeout_s=0.1)


def test_priority_try_respects_waiters(r: redis.Redis, prefix: str) -> None:
    # Slow: the next token is 100 s away, however long the machine takes between the calls.
    pq = PriorityLimiter(r, "pq", rate_per_s=0.01, burst=1, prefix=prefix)
    assert pq.try_acquire(0).status == "admitted"
    d = pq.try_acquire(0)
    assert d.status == "busy" and 90 < d.retry_after_s <= 100


def test_priority_high_is_served_before_low(server_url: str, prefix: str) -> None:
    """Threads queue at levels 1 and 8 behind an empty bucket; the 8s all go first."""
    # Slow enough (one admission per 250 ms) that the highs queue behind at most a low or
    # two however slowly a busy machine starts their threads.
    rate = 4
    pq_cfg = dict(rate_per_s=rate, burst=1, levels=10, aging_s=1000, prefix=prefix)
    r = redis.Redis.from_url(server_url)
    blocker = PriorityLimiter(redis.Redis.from_url(server_url), "pq", **pq_cfg)
    blocker.try_acquire(0)
    order: list[int] = []
    lock = threading.Lock()

    def waiter(level: int) -> None:
        pq = PriorityLimiter(redis.Redis.from_url(server_url), "pq", **pq_cfg)
        pq.acquire(level, timeout_s=60)
        with lock:
            order.append(level)

    lows = [threading.Thread(target=waiter, args=(1,)) for _ in range(6)]
    for t in lows:
        t.start()
    deadline = time.monotonic() + 30
    while r.zcard(f"{prefix}:{{pq:pq}}:queue") + len(order) < 6:   # the lows queued first
        assert time.monotonic() < deadline, "the lows never queued"
        time.sleep(0.005)
    highs = [threading.Thread(target=waiter, args=(8,)) for _ in range(6)]
    for t in highs:
        t.start()
    for t in lows + highs:
        t.join()
    # One or two lows may have been admitted before the highs queued.
    first_high = order.index(8)
    assert first_high <= 3
    assert order[first_high:first_high + 6] == [8] * 6, order


def test_priority_aging_prevents_starvation(server_url: str, prefix: str) -> None:
    cfg = dict(rate_per_s=50, burst=1, levels=3, aging_s=0.05, prefix=prefix)
    pq = PriorityLimiter(redis.Redis.from_url(server_url), "pq", **cfg)
    stop = threading.Event()

    def flood() -> None:
        hi = PriorityLimiter(redis.Redis.from_url(server_url), "pq", **cfg)
        while not stop.is_set():
            hi.acquire(2, timeout_s=5)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.1)
        # Waiting 0.1 s is worth two levels: the low request catches up with the flood.
        # Without aging it would wait for ever behind the flood (and time out here).
        assert pq.acquire(0, timeout_s=10).allowed
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_priority_queue_depth_and_cancel_on_timeout(r: redis.Redis, prefix: str) -> None:
    pq = PriorityLimiter(r, "pq", rate_per_s=0.1, burst=1, levels=2, max_queue_depth=[0, 5],
                         prefix=prefix)
    pq.try_acquire(1)
    with pytest.raises(RateLimited, match="priority 0 queue of pq full"):
        pq.acquire(0, timeout_s=1)
    with pytest.raises(RateLimited):
        pq.acquire(1, timeout_s=0.05)
    # The timed-out waiter left the queue: nothing is left behind.
    assert r.zcard(f"{prefix}:{{pq:pq}}:queue") == 0
    assert r.hgetall(f"{prefix}:{{pq:pq}}:depth") == {}


def test_priority_dead_waiter_is_pruned_after_its_lease(r: redis.Redis, prefix: str) -> None:
    pq = PriorityLimiter(r, "pq", rate_per_s=1000, burst=1, lease_s=0.1, prefix=prefix)
    pq.try_acquire(0)
    # A waiter that polls once and dies (we never poll or cancel it again).
    op = pq._acquire(9, 1, 10)
    call = next(op)
    assert pq._run(iter_once(call)).status in {"queued", "admitted"}
    time.sleep(0.15)
    assert pq.acquire(0, timeout_s=0.5).allowed
    assert r.zcard(f"{prefix}:{{pq:pq}}:queue") == 0


def iter_once(call):  # type: ignore[no-untyped-def]
    return (yield call)


def test_priority_bad_input(r: redis.Redis, prefix: str) -> None:
    pq = PriorityLimiter(r, "pq", rate_per_s=1, burst=1, levels=3, prefix=prefix)
    with pytest.raises(ConfigError, match="priority"):
        pq.try_acquire(3)
    with pytest.raises(ConfigError, match="max_queue_depth"):
        PriorityLimiter(r, "pq", rate_per_s=1, burst=1, levels=3, max_queue_depth=[1, 2])
    with pytest.raises(ConfigError, match="aging_s"):
        PriorityLimiter(r, "pq", rate_per_s=1, burst=1, aging_s=0)
