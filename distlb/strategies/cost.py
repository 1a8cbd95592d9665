"""Cost-aware routing: the cheapest backends that meet a latency and error objective,
spilling to dearer ones as the cheap ones fill up or degrade.

The rule, for each request:

* Each backend declares ``metadata["cost"]`` (the price of one request, in any unit the
  pool shares; ``default_cost`` if absent or invalid) and ``metadata["capacity"]`` (the
  concurrent requests it serves at its nominal latency; the strategy's ``capacity=`` if
  absent; none = never full).
* Among the healthy, non-excluded backends, one *meets the objective* when its moving
  averages in the snapshot do: ``latency_ms <= max_latency_ms`` and ``error_rate <=
  max_error_rate`` (an unset objective always holds; a backend not measured yet, latency
  0, meets it). It *has room* while its fleet-wide ``active_connections`` are below its
  capacity.
* The request goes to the first non-empty set of: (1) backends meeting the objective with
  room, (2) backends missing it with room, (3) every candidate. In (1) and (2) only the
  cheapest cost present counts; within it, and in (3), the least loaded wins
  (``(active + 1) / capacity``, or ``/ weight`` without a capacity), ties at random.
* So traffic fills the cheapest backends up to their capacity and spills to the next
  price only for the excess (merit-order dispatch, as power grids run), moves off a
  cheap backend the moment its averages miss the objective, and when everything is full,
  spreads the overload in proportion to capacity.
* ``probe_share`` (1%) of requests go to the cheapest backend with room that misses the
  objective while a dearer one is chosen, so its moving averages keep being measured and
  it wins its traffic back once it recovers (without probes, an average nobody feeds
  never changes).

Costs live in the shared registry with the backend: change one at run time with
``remove_backend`` + ``add_backend`` (the new record reaches every process at its next
refresh, at once with pub/sub).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from distlb._validate import number
from distlb.errors import ConfigError
from distlb.strategies import _meta
from distlb.strategies.base import Backend, Base, Context, Param


class CostAwareBalancer(Base):
    """The cheapest backend that meets the objective and has room (see the module's rule).

    ``max_latency_ms`` (> 0) and ``max_error_rate`` (in [0, 1]): the objective, None =
    not judged. ``capacity``: concurrent requests per backend assumed when a backend
    declares no ``metadata["capacity"]`` (None = unlimited). ``default_cost`` (>= 0):
    the cost of a backend that declares none. ``probe_share`` in [0, 0.5]: the fraction
    of requests that re-measure a cheaper backend missing the objective. O(n) a pick.
    """

    config_params = (Param("max_latency_ms", float, 0, 1e9, low_inclusive=False, optional=True),
                     Param("max_error_rate", float, 0, 1, optional=True),
                     Param("capacity", float, 0, 1e9, low_inclusive=False, optional=True),
                     Param("default_cost", float, 0, 1e12),
                     Param("probe_share", float, 0, 0.5))

    def __init__(self, *, max_latency_ms: float | None = None,
                 max_error_rate: float | None = None, capacity: float | None = None,
                 default_cost: float = 1.0, probe_share: float = 0.01,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rng, clock)
        self.max_latency_ms = None if max_latency_ms is None else number(
            "max_latency_ms", max_latency_ms, high=1e9)
        self.max_error_rate = None if max_error_rate is None else number(
            "max_error_rate", max_error_rate, low_inclusive=True, high=1)
        self.capacity = None if capacity is None else number("capacity", capacity, high=1e9)
        self.default_cost = number("default_cost", default_cost, low_inclusive=True, high=1e12)
        self.probe_share = number("probe_share", probe_share, low_inclusive=True, high=0.5)
        self._meta = _meta.Cache()
        self._probe_share_asked = self.probe_share
        if self.max_latency_ms is None and self.max_error_rate is None and probe_share > 0:
            self.probe_share = 0.0        # nothing can miss the objective: nothing to probe

    def _reconfigured(self, changed: frozenset[str]) -> None:
        """An objective set at run time turns the probes asked for back on (they were off
        while nothing could miss an objective); a new ``probe_share`` is the one asked."""
        if "probe_share" in changed:
            self._probe_share_asked = self.probe_share
        if self.max_latency_ms is None and self.max_error_rate is None:
            self.probe_share = 0.0
        else:
            self.probe_share = self._probe_share_asked

    def cost_of(self, b: Backend) -> float:
        """The backend's declared cost per request (``default_cost`` if none)."""
        c = self._meta.get(b).cost
        return self.default_cost if c is None else c

    def capacity_of(self, b: Backend) -> float | None:
        """The backend's concurrent capacity (None = unlimited)."""
        return self._meta.get(b).capacity or self.capacity

    def meets_objective(self, b: Backend) -> bool:
        """Whether the backend's moving averages meet the latency and error objective."""
        if self.max_latency_ms is not None and b.latency_ms > self.max_latency_ms:
            return False
        return self.max_error_rate is None or b.error_rate <= self.max_error_rate

    def _load(self, b: Backend) -> float:
        cap = self.capacity_of(b)
        return (b.active_connections + 1) / (cap if cap is not None else b.weight)

    def _has_room(self, b: Backend) -> bool:
        cap = self.capacity_of(b)
        return cap is None or b.active_connections < cap

    def _least_loaded(self, pool: Sequence[Backend]) -> Backend:
        loads = [self._load(b) for b in pool]
        best = min(loads)
        ties = [b for b, load in zip(pool, loads, strict=True) if load == best]
        return ties[0] if len(ties) == 1 else self.rng.choice(ties)

    def _cheapest(self, pool: Sequence[Backend]) -> Backend:
        costs = [self.cost_of(b) for b in pool]
        low = min(costs)
        return self._least_loaded([b for b, c in zip(pool, costs, strict=True) if c == low])

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        good: list[Backend] = []
        degraded: list[Backend] = []
        for b in pool:
            if self._has_room(b):
                (good if self.meets_objective(b) else degraded).append(b)
        if good:
            chosen = self._cheapest(good)
            if degraded and self.probe_share > 0 and self.rng.random() < self.probe_share:
                probe = self._cheapest(degraded)
                if self.cost_of(probe) < self.cost_of(chosen):
                    return probe
            return chosen
        if degraded:
            return self._cheapest(degraded)
        return self._least_loaded(pool)

    @staticmethod
    def check_metadata(metadata: dict[str, object]) -> None:
        """Raise ``ConfigError`` if ``cost`` or ``capacity`` in a backend's metadata is
        present but unusable (the strategy would ignore it): call it before
        ``add_backend`` to catch a typo instead of routing on the default."""
        for name, positive in (("cost", False), ("capacity", True)):
            if name not in metadata:
                continue
            value = metadata[name]
            probe = Backend("x", metadata={name: value})
            if _meta.number(probe, name, positive=positive) is None:
                raise ConfigError(f"metadata[{name!r}]",
                                  f"must be a finite number {'> 0' if positive else '>= 0'}, "
                                  f"got {value!r:.40}")
