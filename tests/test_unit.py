"""Fast unit layer, no real server: the runners' control flow with fakes and a fake clock.

fakeredis (with lupa) runs the real Lua scripts in-process, which is enough to
test the Python control flow around them; it proves nothing about atomicity,
TIME or the cluster, which the real-server tests cover.
"""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
import redis

from distlb import PriorityLimiter, RateLimited, TokenBucket
from tests.clock import FakeClock


def test_acquire_deadline_uses_the_injected_clock_and_sleep() -> None:
    clock = FakeClock()
    tb = TokenBucket(fakeredis.FakeRedis(), "api", rate_per_s=0.01, burst=1, clock=clock,
                     sleep=clock.sleep)
    tb.try_acquire()
    t0 = time.monotonic()
    with pytest.raises(RateLimited) as info:
        tb.acquire(timeout_s=5)
    assert time.monotonic() - t0 < 0.5  # nothing slept on the wall clock
    assert clock.slept == []  # the first retry (100 s) would already pass the deadline
    assert info.value.retry_after_s > 5


class DownClient:
    """A client whose server is gone: every call fails like a refused connection."""

    def __init__(self) -> None:
        self.calls = 0

    def evalsha(self, *args: Any) -> Any:
        self.calls += 1
        raise redis.ConnectionError("refused")


def test_guard_retries_the_store_only_after_its_window() -> None:
    clock = FakeClock()
    client = DownClient()
    tb = TokenBucket(client, "api", rate_per_s=1, burst=1, on_store_error="fail_closed",
                     retry_store_after_s=2.0, clock=clock)
    assert [tb.try_acquire().source for _ in range(5)] == ["fail_closed"] * 5
    assert client.calls == 1
    clock.now += 2.5
    tb.try_acquire()
    assert client.calls == 2
    assert tb.store_stats.outages == 1 and tb.store_stats.fallbacks == 6


class RecordingClient(fakeredis.FakeRedis):
    modes: list[str]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.modes.append(str(keys_and_args[numkeys]))
        return super().evalsha(sha, numkeys, *keys_and_args)


def test_interrupted_priority_waiter_leaves_the_queue() -> None:
    client = RecordingClient()
    client.modes = []

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    pq = PriorityLimiter(client, "pq", rate_per_s=0.01, burst=1, sleep=interrupted)
    pq.try_acquire(0)
    with pytest.raises(KeyboardInterrupt):
        pq.acquire(5, timeout_s=60)
    assert client.modes[-2:] == ["poll", "cancel"]
    assert client.zcard("distlb:{pq:pq}:queue") == 0
