"""Adaptive selection: a weighted score of live statistics, predictive, and peak-EWMA."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from distlb._validate import integer, number
from distlb.errors import ConfigError
from distlb.strategies.base import Backend, Base, Context, Param

#: ``AdaptiveBalancer``'s modes: adaptive, predictive and latency-aware.
ADAPTIVE_MODES = ("adaptive", "predictive", "latency_aware")


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """How much each statistic counts in ``AdaptiveBalancer``'s score (must sum to 1)."""

    latency_weight: float = 0.4
    error_weight: float = 0.3
    connection_weight: float = 0.2
    throughput_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("latency_weight", "error_weight", "connection_weight", "throughput_weight"):
            number(name, getattr(self, name), low=0, low_inclusive=True, high=1)
        total = self.latency_weight + self.error_weight + self.connection_weight \
            + self.throughput_weight
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ConfigError("ScoringConfig", f"weights must sum to 1, got {total:g}")


class AdaptiveBalancer(Base):
    """Lowest score wins; the score mixes normalized statistics and the backend's weight.

    For each healthy backend, with every statistic divided by its maximum over the
    candidates (so each term is in [0, 1]):

        score = (latency_weight x latency/max_latency
                 + error_weight x error_rate
                 + connection_weight x connections/max_connections
                 + throughput_weight x (1 - throughput/max_throughput)) / (weight/max_weight)

    Low latency, few errors, few connections and high throughput score low; a heavier
    backend's score shrinks in proportion. Ties go to a random one among the best.

    ``mode`` chooses one of three modes:

    * ``"adaptive"`` (default): the score above, on the snapshot's latencies.
    * ``"predictive"`` (or ``predictive=True``): each backend's latency is replaced by its
      trend extrapolated ``horizon_s`` ahead: a least-squares line through the latencies
      seen over the last ``history_s`` (from ``observe`` or successive snapshots), so a
      backend that is getting slower loses traffic before it is slow.
    * ``"latency_aware"`` (also spelled ``"latency-aware"``): peak-EWMA, exactly
      :class:`PeakEwmaBalancer` with ``decay_s``: the latency estimate jumps up to any
      slower observation and decays towards faster ones; of two random backends the one
      with the lower ``estimate x (connections + 1) / weight`` wins. ``scores`` then
      returns those costs. It learns from ``observe`` (the load balancer feeds it every
      completed call).
    """

    config_params = (Param("decay_s", float, 0, 86400, low_inclusive=False),
                     Param("history_s", float, 0, 86400, low_inclusive=False),
                     Param("horizon_s", float, 0, 86400))

    def _reconfigured(self, changed: frozenset[str]) -> None:
        """``decay_s`` also drives the latency-aware mode's peak-EWMA estimator."""
        if "decay_s" in changed and self._peak is not None:
            self._peak.configure(decay_s=self.decay_s)

    def __init__(self, config: ScoringConfig | None = None, *, mode: str | None = None,
                 predictive: bool = False, history_s: float = 30.0, horizon_s: float = 5.0,
                 decay_s: float = 10.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rng, clock)
        self.config = config or ScoringConfig()
        if not isinstance(self.config, ScoringConfig):
            raise ConfigError("config", "must be a ScoringConfig")
        if mode is None:
            mode = "predictive" if predictive else "adaptive"
        if not isinstance(mode, str) or mode.replace("-", "_") not in ADAPTIVE_MODES:
            raise ConfigError("mode", f"must be one of {', '.join(ADAPTIVE_MODES)}, "
                                      f"got {mode!r:.40}")
        self.mode = mode.replace("-", "_")
        if predictive and self.mode != "predictive":
            raise ConfigError("predictive", f"predictive=True contradicts mode={mode!r}")
        self.predictive = self.mode == "predictive"
        self.decay_s = number("decay_s", decay_s, high=86400)
        self._peak: PeakEwmaBalancer | None = None
        if self.mode == "latency_aware":
            # Its clock follows this one's, even when a test or simulation swaps the clock later.
            self._peak = PeakEwmaBalancer(decay_s=self.decay_s, rng=self.rng,
                                          clock=lambda: self.clock())
        self.history_s = number("history_s", history_s, high=86400)
        self.horizon_s = number("horizon_s", horizon_s, low_inclusive=True, high=86400)
        self._lock = threading.Lock()
        self._history: dict[str, deque[tuple[float, float]]] = {}

    def observe(self, backend_id: str, latency_s: float, success: bool = True) -> None:
        """Record one latency sample (the predictive trend, the latency-aware estimate)."""
        if self._peak is not None:
            self._peak.observe(backend_id, latency_s, success)
            return
        self._record(backend_id, latency_s * 1000, self.clock())

    def _record(self, backend_id: str, latency_ms: float, now: float) -> None:
        with self._lock:
            h = self._history.setdefault(backend_id, deque(maxlen=256))
            h.append((now, latency_ms))
            while h and h[0][0] < now - self.history_s:
                h.popleft()

    def predicted_latency_ms(self, b: Backend, now: float) -> float:
        """The latency trend extrapolated ``horizon_s`` ahead (never below zero)."""
        with self._lock:
            points = list(self._history.get(b.id, ()))
        if len(points) < 3:
            return b.latency_ms
        n = len(points)
        mt = sum(t for t, _ in points) / n
        ml = sum(lat for _, lat in points) / n
        var = sum((t - mt) ** 2 for t, _ in points)
        if var == 0:
            return ml
        slope = sum((t - mt) * (lat - ml) for t, lat in points) / var
        return max(0.0, ml + slope * (now + self.horizon_s - mt))

    def scores(self, backends: Sequence[Backend], ctx: Context | None = None) -> dict[str, float]:
        """Every candidate's score (lower is better), for logs and dashboards."""
        pool = self._candidates(backends, ctx)
        if self._peak is not None:
            return {b.id: self._peak.cost(b) for b in pool}
        now = self.clock()
        if self.predictive:
            for b in pool:
                self._record(b.id, b.latency_ms, now)
            latency = {b.id: self.predicted_latency_ms(b, now) for b in pool}
        else:
            latency = {b.id: b.latency_ms for b in pool}
        max_lat = max(latency.values()) or 1.0
        max_conn = max(b.active_connections for b in pool) or 1
        max_tput = max(b.throughput_per_s for b in pool) or 1.0
        max_w = max(b.weight for b in pool)
        c = self.config
        return {
            b.id: (c.latency_weight * latency[b.id] / max_lat
                   + c.error_weight * b.error_rate
                   + c.connection_weight * b.active_connections / max_conn
                   + c.throughput_weight * (1 - b.throughput_per_s / max_tput))
            / (b.weight / max_w)
            for b in pool
        }

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        if self._peak is not None:
            return self._peak.select(backends, ctx)
        scores = self.scores(backends, ctx)
        best = min(scores.values())
        ids = [bid for bid, s in scores.items() if s == best]
        chosen = ids[0] if len(ids) == 1 else self.rng.choice(ids)
        return next(b for b in backends if b.id == chosen)


class PeakEwmaBalancer(Base):
    """Latency-aware power of two choices with peak-EWMA cost (Finagle, Linkerd).

    Each backend's latency estimate jumps up to any slower observation at once
    (peak) and decays towards faster ones with time constant ``decay_s``:
    ``ewma = ewma x w + sample x (1 - w)``, ``w = exp(-elapsed / decay_s)``. Its cost
    is ``ewma x (active_connections + 1) / weight``; of two random backends the
    cheaper wins. A backend never observed uses ``default_latency_ms`` (or its
    snapshot latency), so new backends get tried. O(1) a pick.
    """

    config_params = (Param("decay_s", float, 0, 86400, low_inclusive=False),
                     Param("default_latency_ms", float, 0, 1e6, low_inclusive=False),
                     Param("choices", int, 2, 16))

    def __init__(self, *, decay_s: float = 10.0, default_latency_ms: float = 1.0,
                 choices: int = 2, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rng, clock)
        self.decay_s = number("decay_s", decay_s, high=86400)
        self.default_latency_ms = number("default_latency_ms", default_latency_ms, high=1e6)
        self.choices = integer("choices", choices, low=2, high=16)
        self._lock = threading.Lock()
        self._ewma: dict[str, tuple[float, float]] = {}   # id -> (latency ms, at)

    def observe(self, backend_id: str, latency_s: float, success: bool = True) -> None:
        """Feed one request's latency (failures count as observed latency too)."""
        sample = latency_s * 1000
        now = self.clock()
        with self._lock:
            old = self._ewma.get(backend_id)
            if old is None or sample > old[0]:
                self._ewma[backend_id] = (sample, now)
            else:
                w = math.exp(-max(0.0, now - old[1]) / self.decay_s)
                self._ewma[backend_id] = (old[0] * w + sample * (1 - w), now)

    def cost(self, b: Backend) -> float:
        with self._lock:
            seen = self._ewma.get(b.id)
        latency = seen[0] if seen else (b.latency_ms or self.default_latency_ms)
        return latency * (b.active_connections + 1) / b.weight

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        if len(pool) == 1:
            return pool[0]
        picks = self.rng.sample(pool, min(self.choices, len(pool)))
        return min(picks, key=self.cost)
