"""Least connections: plain, weighted, slow start, and power of two choices."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from distlb._validate import number
from distlb.strategies.base import Backend, Base, Context, Param


def _least(pool: Sequence[Backend], load: Callable[[Backend], float],
           rng: random.Random) -> Backend:
    """The backend with the least load; ties broken at random (no herd on the first)."""
    best_load = min(load(b) for b in pool)
    best = [b for b in pool if load(b) == best_load]
    return best[0] if len(best) == 1 else rng.choice(best)


class LeastConnectionsBalancer(Base):
    """Fewest active connections (fleet-wide counts from the snapshot). O(n)."""

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        return _least(self._candidates(backends, ctx), lambda b: b.active_connections, self.rng)


class WeightedLeastConnectionsBalancer(Base):
    """Fewest ``active_connections / weight``, optionally with slow start. O(n).

    Slow start: a backend's effective weight ramps linearly from 10% to 100% of
    its weight over ``slow_start_s`` after ``added_at_s`` (joined or recovered),
    so a cold backend is not flooded the moment it appears.
    """

    config_params = (Param("slow_start_s", float, 0, 86400),)

    def __init__(self, *, slow_start_s: float = 0.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rng, clock)
        self.slow_start_s = number("slow_start_s", slow_start_s, low_inclusive=True, high=86400)

    def effective_weight(self, b: Backend, now: float) -> float:
        if self.slow_start_s <= 0:
            return float(b.weight)
        ramp = min(1.0, max(0.0, (now - b.added_at_s) / self.slow_start_s))
        return b.weight * (0.1 + 0.9 * ramp)

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        now = self.clock()
        return _least(self._candidates(backends, ctx),
                      lambda b: (b.active_connections + 1) / self.effective_weight(b, now),
                      self.rng)


class PowerOfTwoChoicesBalancer(Base):
    """Pick two backends at random, keep the one with less ``connections / weight``.

    O(1) a pick (after the health filter): near least-connections balance without
    every process herding onto the same "least loaded" backend (Mitzenmacher).
    """

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        if len(pool) == 1:
            return pool[0]
        a, b = self.rng.sample(pool, 2)
        la = (a.active_connections + 1) / a.weight
        lb = (b.active_connections + 1) / b.weight
        if la == lb:
            return a if self.rng.random() < 0.5 else b
        return a if la < lb else b
