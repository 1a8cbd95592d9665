"""Round robin: simple, weighted (EDF, O(log n) a pick) and smooth weighted (NGINX)."""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Sequence

from distlb.strategies.base import Backend, Base, Context


class RoundRobinBalancer(Base):
    """Each healthy backend in turn. O(n) to filter health, O(1) to pick."""

    def __init__(self) -> None:
        super().__init__()
        self._next = 0
        self._lock = threading.Lock()

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        with self._lock:
            i = self._next % len(pool)
            self._next = i + 1
        return pool[i]


class WeightedRoundRobinBalancer(Base):
    """Each backend gets exactly ``weight / total`` of the picks over every full cycle.

    Earliest-deadline-first, as in Envoy: backend ``i``'s k-th pick is due at
    ``k / weight_i``; a heap pops the earliest. Keys are exact integers
    (``k x L / weight_i`` with ``L`` the weights' least common multiple), so a
    cycle of ``sum(weights)`` picks holds exactly ``weight_i`` of each; ties go
    to the backend listed first. O(log n) a pick; the heap is rebuilt when the
    set of healthy backends or their weights change.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int], ...] = ()
        self._heap: list[tuple[int, int, int]] = []   # (deadline, index, picks so far)
        self._pool: list[Backend] = []
        self._lcm = 1

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        with self._lock:
            # The same filtered pool (a repeated tuple snapshot) needs no check; a new
            # snapshot of the same backends and weights keeps the schedule going.
            if pool is not self._pool:
                signature = tuple((b.id, b.weight) for b in pool)
                if signature != self._signature:
                    self._signature = signature
                    self._lcm = math.lcm(*(b.weight for b in pool))
                    self._heap = [(self._lcm // b.weight, i, 1) for i, b in enumerate(pool)]
                    heapq.heapify(self._heap)
                self._pool = pool
            _, i, k = self._heap[0]
            weight = self._pool[i].weight
            heapq.heapreplace(self._heap, ((k + 1) * (self._lcm // weight), i, k + 1))
            return self._pool[i]


class SmoothWeightedRoundRobinBalancer(Base):
    """NGINX's smooth weighted round robin: weighted shares without bursts.

    Each pick adds every backend's weight to its current score, picks the
    highest score and subtracts the total from it. Weights 5, 1, 1 give
    ``a a b a c a a`` rather than ``a a a a a b c``. O(n) a pick.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._current: dict[str, int] = {}

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        total = 0
        best: Backend | None = None
        best_score = 0
        with self._lock:
            current = self._current
            if len(current) > 2 * len(pool) + 16:   # forget backends long gone
                live = {b.id for b in pool}
                self._current = current = {k: v for k, v in current.items() if k in live}
            for b in pool:
                score = current.get(b.id, 0) + b.weight
                current[b.id] = score
                total += b.weight
                if best is None or score > best_score:
                    best, best_score = b, score
            assert best is not None
            current[best.id] = best_score - total
        return best
