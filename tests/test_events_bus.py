"""The sync event bus: joining and leaving it from any thread, finalizers included."""

from __future__ import annotations

import threading
import time

import redis

from distlb._events import SyncBus


def test_a_bus_thread_starts_outside_the_lock(r: redis.Redis, prefix: str) -> None:
    """Thread.start() waits for the new thread to run, and the GC may run a finalizer
    (``release()``, which takes the buses' lock) on that thread first: starting it under
    the lock deadlocked both (seen in CI). Here another thread releases a bus while a new
    one starts; it must not wait for the start."""
    other = SyncBus.get(r, f"{prefix}:a", time.monotonic)
    real_start = SyncBus.start
    waited: list[bool] = []

    def start(self: SyncBus) -> None:
        t = threading.Thread(target=other.release)
        t.start()
        t.join(10)
        waited.append(t.is_alive())       # still blocked on the lock after 10 s
        real_start(self)

    SyncBus.start = start                 # type: ignore[method-assign]
    try:
        bus = SyncBus.get(r, f"{prefix}:b", time.monotonic)
    finally:
        SyncBus.start = real_start        # type: ignore[method-assign]
    bus.release()
    assert waited == [False]
    assert bus.thread.is_alive() or bus.stop.is_set()
