"""The in-process twins used by the ``local`` failure policy: arithmetic, threads, fork."""

from __future__ import annotations

import os
import threading

import pytest

from distlb._core.bucket import BucketSpec, LocalBuckets
from distlb._core.leaky import LocalLeaky
from distlb._core.local import LocalState
from tests.clock import FakeClock


def spec(cost: float = 1, rate: float = 10, burst: float = 4, key: str = "k") -> BucketSpec:
    return BucketSpec(key, key, rate, burst, cost)


def test_local_bucket_divides_rate_and_burst_by_processes() -> None:
    clock = FakeClock()
    twin = LocalBuckets(2, LocalState(clock))
    assert [twin.decide("take", [spec()]).allowed for _ in range(3)] == [True, True, False]
    d = twin.decide("take", [spec()])
    assert d.source == "local" and d.retry_after_s == pytest.approx(0.2)  # 5/s locally
    clock.now += 0.2
    assert twin.decide("take", [spec()]).allowed


def test_local_bucket_is_all_or_nothing() -> None:
    twin = LocalBuckets(1, LocalState(FakeClock()))
    a, b = spec(key="a", burst=1), spec(key="b", burst=5)
    assert twin.decide("take", [a, b]).allowed
    d = twin.decide("take", [a, b])
    assert d.denied_by == ("a",)
    assert {s.label: s.remaining for s in d.limits}["b"] == 4  # b was not charged


def test_local_leaky_spacing() -> None:
    clock = FakeClock()
    twin = LocalLeaky(1, LocalState(clock))
    delays = [twin.decide("take", "k", 10, 3, 1).delay_s for _ in range(3)]
    assert delays == pytest.approx([0, 0.1, 0.2])
    assert not twin.decide("take", "k", 10, 3, 1).allowed


def test_threads_share_the_local_state_exactly() -> None:
    twin = LocalBuckets(1, LocalState(FakeClock()))
    admitted = []

    def hammer() -> None:
        admitted.append(sum(twin.decide("take", [spec(burst=500, rate=1)]).allowed
                            for _ in range(200)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_starts_with_fresh_local_state() -> None:
    state = LocalState(FakeClock())
    twin = LocalBuckets(1, state)
    twin.decide("take", [spec(burst=1)])
    state.lock.acquire()  # as if another thread held it at fork time
    pid = os.fork()
    if pid == 0:  # child: the lock is new and the parent's counts are gone
        ok = twin.decide("take", [spec(burst=1)]).allowed
        os._exit(0 if ok else 1)
    state.lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not twin.decide("take", [spec(burst=1)]).allowed  # the parent's state is intact
