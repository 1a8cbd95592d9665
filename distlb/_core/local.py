"""In-process twins of the shared limiters, for the ``local`` failure policy.

While the store is unreachable each process keeps limiting on its own, at the
configured rate divided by ``expected_processes``, so the fleet as a whole stays
near the configured limit. The arithmetic mirrors ``lua/_common.lua``; time is
the local monotonic clock, which is fine because this state is never shared.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable


class LocalState:
    """A small lock-guarded dict of per-key state, reset in a forked child.

    A child must not inherit a lock a parent thread held at fork time, nor the
    parent's local counts (gunicorn ``--preload`` forks after construction).
    """

    _all: weakref.WeakSet[LocalState] = weakref.WeakSet()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.data: dict[str, list[float]] = {}
        LocalState._all.add(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()
        self.data = {}

    @classmethod
    def _reset_all_after_fork(cls) -> None:
        for state in list(cls._all):
            state._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=LocalState._reset_all_after_fork)
