"""Locality-aware routing: keep traffic in the caller's zone, then its region, spill over
in proportion when local capacity is short.

The rule (Envoy's priority levels with an overprovisioning factor, plus load):

* Backends carry ``metadata["region"]`` and ``metadata["zone"]``; the process declares
  its own ``region`` and ``zone``. Each backend falls in one of three levels: 0 = the
  caller's zone, 1 = another zone of the caller's region, 2 = anywhere else (another
  region, or no region declared).
* A backend's *availability* is 0 when it is unhealthy, excluded (its breaker is open,
  or a retry already tried it) and otherwise 1, reduced to ``capacity / active`` when
  its fleet-wide ``active_connections`` exceed its ``capacity`` (``metadata["capacity"]``,
  else the strategy's ``capacity=``; none = load is not judged). A level's *health* is
  its weighted availability: ``sum(weight x availability) / sum(weight)``.
* Level ``p`` takes ``min(remaining, overprovisioning x health_p)`` of the traffic,
  in order 0, 1, 2, where ``remaining`` starts at 1 (so with the default 1.4 a zone
  keeps all its traffic until more than 1/1.4 = 29% of its capacity is gone, then
  sheds in proportion: 50% healthy keeps 70%). If the levels together cannot take
  everything (``sum(min(1, 1.4 x health_p)) < 1``) each is scaled up by the same
  factor, so traffic is never dropped while any backend is up.
* Within levels 1 and 2 a level's share is split between its localities in proportion
  to their *spare* capacity, ``sum(weight x availability x headroom)`` with
  ``headroom = 1 - active / capacity`` (1 without a capacity), or to their weighted
  availability when none has any spare.
* The chosen locality's backends go to the inner strategy, which picks among them as it
  would among a whole pool (its health filter, ``ctx.exclude``, hashing and all).

Better than Envoy's rule in two ways: overload counts like ill health (a zone whose
backends run above capacity sheds the excess to the others instead of queueing it),
and spill-over favours the localities with room, not merely the healthy ones. Unlike
Envoy's zone-aware routing it needs no knowledge of where the other callers are: the
fleet-wide connection counts carry that signal.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distlb._validate import number
from distlb.errors import ConfigError
from distlb.strategies import _meta
from distlb.strategies.base import (
    Backend,
    Base,
    Context,
    NoBackendAvailable,
    Param,
    Strategy,
)

#: The levels, in the order they are filled.
LOCAL_ZONE, LOCAL_REGION, ELSEWHERE = 0, 1, 2

#: Envoy's default overprovisioning factor (140%).
DEFAULT_OVERPROVISIONING = 1.4


@dataclass(frozen=True, slots=True, order=True)
class Locality:
    """Where a backend runs: its ``metadata["region"]`` and ``metadata["zone"]`` (None if
    absent or not a non-empty str)."""

    region: str | None
    zone: str | None

    @classmethod
    def of(cls, b: Backend) -> Locality:
        return cls(_meta.text(b, "region"), _meta.text(b, "zone"))

    def __str__(self) -> str:
        return f"{self.region or '?'}/{self.zone or '?'}"


@dataclass(frozen=True, slots=True)
class _Group:
    """One locality of a snapshot: all its backends, and its capacity figures (weight units)."""

    locality: Locality
    level: int
    backends: tuple[Backend, ...]   # every backend of it: the inner strategy filters health
    total: float                    # sum of weights
    available: float                # sum of weight x availability
    spare: float                    # sum of weight x availability x headroom


@dataclass(frozen=True, slots=True)
class _Plan:
    """The split for one snapshot: cumulative shares and the group each one leads to."""

    source: Sequence[Backend] | None
    exclude: frozenset[str]
    cumulative: tuple[float, ...]
    groups: tuple[_Group, ...]
    shares: dict[Locality, float]


def _check_name(field: str, value: object, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ConfigError(field, f"must be a non-empty str of at most 128 characters"
                                 f"{' or None' if optional else ''}, got {value!r:.40}")
    return value


class LocalityAwareBalancer(Base):
    """Prefer the caller's zone, then its region, then anywhere; spill over by the module's rule.

    ``strategy`` picks within the chosen locality: a strategy instance (shared by every
    locality) or a zero-argument factory such as the class itself (one instance per
    locality: round-robin cursors, rings and schedules then stay per locality, so a
    hashing strategy's ring is not rebuilt each time the locality changes). Defaults to
    ``RoundRobinBalancer``. ``region`` / ``zone``: where this process runs (``zone=None``:
    region only). ``overprovisioning``: how much headroom each locality is assumed to
    have, in [1, 100] (1.4 = 40%, Envoy's default). ``capacity``: concurrent requests
    per backend assumed when a backend declares no ``metadata["capacity"]``; None
    (default) = overload is judged only for backends that declare one. ``rng``: for
    the locality draw (the inner strategies keep their own).
    """

    config_params = (Param("overprovisioning", float, 1, 100),
                     Param("capacity", float, 0, 1e9, low_inclusive=False, optional=True))

    def __init__(self, strategy: Strategy | Callable[[], Strategy] | None = None, *,
                 region: str, zone: str | None = None,
                 overprovisioning: float = DEFAULT_OVERPROVISIONING,
                 capacity: float | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rng, clock)
        self.region = _check_name("region", region, optional=False)
        self.zone = _check_name("zone", zone, optional=True)
        self.overprovisioning = number("overprovisioning", overprovisioning, low=1,
                                       low_inclusive=True, high=100)
        self.capacity = None if capacity is None else number("capacity", capacity, high=1e9)
        self._lock = threading.Lock()
        self._factory: Callable[[], Strategy] | None = None
        self._shared: Strategy | None = None
        if strategy is None:
            from distlb.strategies.round_robin import RoundRobinBalancer
            strategy = RoundRobinBalancer
        if isinstance(strategy, type) or (callable(strategy) and not hasattr(strategy, "select")):
            self._factory = strategy
            probe = strategy()
            if not hasattr(probe, "select"):
                raise ConfigError("strategy", "a factory must return an object with "
                                              "select(backends, ctx)")
        elif hasattr(strategy, "select"):
            self._shared = strategy
        else:
            raise ConfigError("strategy", "must have select(backends, ctx), or be a factory "
                                          "of such objects")
        self._inner: dict[Locality, Strategy] = {}
        self._plan: _Plan | None = None
        self._meta = _meta.Cache()

    # -- the rule --------------------------------------------------------------------------

    def level_of(self, locality: Locality) -> int:
        """0: the caller's zone; 1: another zone of its region; 2: anywhere else."""
        if locality.region != self.region:
            return ELSEWHERE
        if self.zone is not None and locality.zone == self.zone:
            return LOCAL_ZONE
        return LOCAL_REGION

    def _groups(self, backends: Sequence[Backend], exclude: frozenset[str]) -> list[_Group]:
        # One pass, O(n), keyed by (region, zone) tuples (hashed in C); metadata is parsed
        # once per backend and metadata object (the pool's snapshots share it).
        acc: dict[tuple[str | None, str | None], list[Any]] = {}
        default_cap = self.capacity
        get = self._meta.get
        for b in backends:
            meta = get(b)
            key = (meta.region, meta.zone)
            g = acc.get(key)
            if g is None:
                g = acc[key] = [[], 0.0, 0.0, 0.0]   # members, total, available, spare
            g[0].append(b)
            w = b.weight
            if w <= 0:
                continue                  # drained: no capacity, not a shortfall either
            g[1] += w
            if not b.healthy or (exclude and b.id in exclude):
                continue
            cap = meta.capacity or default_cap
            if cap is None:
                g[2] += w
                g[3] += w
                continue
            active = b.active_connections if b.active_connections > 0 else 0
            avail = 1.0 if active <= cap else cap / active
            g[2] += w * avail
            g[3] += w * avail * max(0.0, 1.0 - active / cap)
        out = []
        for key in sorted(acc, key=lambda k: (k[0] or "", k[1] or "")):
            loc = Locality(*key)
            members, total, available, spare = acc[key]
            out.append(_Group(loc, self.level_of(loc), tuple(members), total, available, spare))
        return out

    def _make_plan(self, backends: Sequence[Backend], exclude: frozenset[str]) -> _Plan:
        groups = self._groups(backends, exclude)
        levels: list[list[_Group]] = [[], [], []]
        for g in groups:
            levels[g.level].append(g)
        effective = []
        for level in levels:
            total = sum(g.total for g in level)
            health = sum(g.available for g in level) / total if total > 0 else 0.0
            effective.append(min(1.0, self.overprovisioning * health))
        overall = sum(effective)
        if overall <= 0:
            raise NoBackendAvailable(f"no healthy backend among {len(backends)}")
        if overall < 1:                   # everything degraded: scale up, drop nothing
            effective = [e / overall for e in effective]
        remaining = 1.0
        shares: dict[Locality, float] = {}
        chosen: list[_Group] = []
        for level, e in zip(levels, effective, strict=True):
            load = min(remaining, e)
            remaining -= load
            usable = [g for g in level if g.available > 0]
            if load <= 0 or not usable:
                continue
            spare = sum(g.spare for g in usable)
            weigh: Callable[[_Group], float] = ((lambda g: g.spare) if spare > 0
                                                else (lambda g: g.available))
            whole = sum(weigh(g) for g in usable)
            for g in usable:
                if weigh(g) > 0:
                    shares[g.locality] = load * weigh(g) / whole
                    chosen.append(g)
        cumulative, acc = [], 0.0
        for g in chosen:
            acc += shares[g.locality]
            cumulative.append(acc)
        return _Plan(backends if isinstance(backends, tuple) else None, exclude,
                     tuple(cumulative), tuple(chosen), shares)

    def _plan_for(self, backends: Sequence[Backend], ctx: Context | None) -> _Plan:
        exclude = ctx.exclude if ctx is not None else frozenset()
        plan = self._plan
        if plan is not None and plan.source is backends and plan.exclude == exclude:
            return plan                   # the same immutable snapshot as last time
        plan = self._make_plan(backends, exclude)
        self._plan = plan
        return plan

    def shares(self, backends: Sequence[Backend], ctx: Context | None = None
               ) -> dict[Locality, float]:
        """The fraction of traffic each locality gets from this process under the rule
        (localities with none are left out); for dashboards, logs and tests."""
        return dict(self._plan_for(backends, ctx).shares)

    # -- selection -------------------------------------------------------------------------

    def strategy_for(self, locality: Locality) -> Strategy:
        """The inner strategy that picks within ``locality``."""
        if self._shared is not None:
            return self._shared
        with self._lock:
            inner = self._inner.get(locality)
            if inner is None:
                assert self._factory is not None
                inner = self._inner[locality] = self._factory()
            return inner

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        plan = self._plan_for(backends, ctx)
        i = 0
        if len(plan.groups) > 1:
            i = min(bisect.bisect_right(plan.cumulative, self.rng.random() * plan.cumulative[-1]),
                    len(plan.groups) - 1)
        group = plan.groups[i]
        return self.strategy_for(group.locality).select(group.backends, ctx)

    def observe(self, backend_id: str, latency_s: float, success: bool = True) -> None:
        """Hand a completed request to the inner strategy of the backend's locality
        (strategies that learn from latency, like peak-EWMA, keep learning)."""
        if self._shared is not None:
            targets: list[Any] = [self._shared]
        else:
            meta = self._meta.known(backend_id)
            loc = Locality(meta.region, meta.zone) if meta is not None else None
            with self._lock:
                known = self._inner.get(loc) if loc is not None else None
                targets = [known] if known is not None else list(self._inner.values())
        for inner in targets:
            observe = getattr(inner, "observe", None)
            if observe is not None:
                observe(backend_id, latency_s, success)
