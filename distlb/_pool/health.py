"""A pool's health round: one process of the fleet (the elected checker) probes every
backend and publishes the changes.

The checker role is a lease in Redis (``<pool>:checker``, ``elect.lua``) held for
``lease_s`` seconds and renewed by the holder's next round, so one process probes at a
time and another takes over within ``lease_s`` when it dies. Pure: the probe is an
``Invoke`` the runner times; the pool hands in how to refresh its view and how to
change a backend's health (the registry).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from distlb import _keys
from distlb._core.guard import StoreGuard
from distlb._core.ops import Call, Invoke, Op, Outcome, Steps, steps
from distlb._core.scripts import script
from distlb.strategies.base import Backend


class HealthRound:
    """The health checks of one pool object.

    ``refresh()``: an operation reading a fresh snapshot; ``snapshot()``: the view's
    backends after it; ``set_health(id, healthy)``: the registry's change.
    """

    def __init__(self, pool_key: str, guard: StoreGuard, refresh: Callable[[], Op[Any]],
                 snapshot: Callable[[], Sequence[Backend]],
                 set_health: Callable[[str, bool], Steps[None]]) -> None:
        self.key = _keys.part(pool_key, "checker")
        self.checker_id = uuid.uuid4().hex      #: this object's claim on the checker role
        self._guard = guard
        self._refresh = refresh
        self._snapshot = snapshot
        self._set_health = set_health

    def elect(self, lease_s: float) -> Call[int]:
        """Take or renew the checker role for ``lease_s`` seconds: 1 if this object holds
        it, 0 if another does (or the store is unreachable: nobody probes)."""
        return Call(script("elect"), (self.key,), (self.checker_id, math.ceil(lease_s * 1000)),
                    int, lambda: 0, self._guard)

    def run(self, check: Callable[[Backend], Any], lease_s: float) -> Steps[int]:
        """If this object holds the checker role, probe every backend (``check(backend)``:
        truthy and no exception = healthy) and publish changes. Returns how many backends
        changed health."""
        elected: int = yield self.elect(lease_s)
        if not elected:
            return 0
        yield from steps(self._refresh())
        changed = 0
        for b in self._snapshot():
            outcome: Outcome = yield Invoke(check, (b,), {})
            healthy = outcome.error is None and bool(outcome.value)
            if healthy != b.healthy:
                yield from self._set_health(b.id, healthy)
                changed += 1
        return changed
