"""A pool's per-backend circuit breakers: which backends refuse calls, which are due a probe.

The pool asks its breakers only through this unit, and this unit asks each breaker only
through its named internal interface (``local_attempt``, ``known_state``,
``add_listener``): no reach into a breaker's view or subscription.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable

from distlb._breaker import BreakerBase, BreakerSettings
from distlb.results import Transition
from distlb.strategies import Backend


class PoolBreakers:
    """The breakers of one pool's backends, made on first use with ``settings``.

    ``new_breaker(name, settings)`` builds one on the pool's client (the shell's own
    flavour); ``pool_name`` names them ``<pool>/<backend id>``. Only breakers seen open or
    refusing are tracked (by their transition events), so the common all-closed case costs
    nothing per call.
    """

    #: How often this process may send a recovering backend a probe, whatever the strategy.
    probe_interval_s = 0.05

    def __init__(self, pool_name: str, settings: BreakerSettings | None, subscribe: bool,
                 new_breaker: Callable[[str, BreakerSettings], BreakerBase]) -> None:
        self.pool_name = pool_name
        self.settings = settings
        if settings is not None and not subscribe:   # a pool that polls: its breakers too
            self.settings = settings.replace(subscribe=False)
        self._new_breaker = new_breaker
        self._lock = threading.Lock()
        self._breakers: dict[str, BreakerBase] = {}
        self._open_ids: set[str] = set()
        self._next_probe: dict[str, float] = {}

    def of(self, backend_id: str) -> BreakerBase | None:
        """The breaker of one backend (made now if new), or None when the pool has none."""
        if self.settings is None:
            return None
        with self._lock:
            cb = self._breakers.get(backend_id)
            if cb is None:
                cb = self._breakers[backend_id] = self._new_breaker(
                    f"{self.pool_name}/{backend_id}", self.settings)
                # The backend id is bound here, never recovered from the breaker's name
                # (an id may itself contain "/").
                cb.metrics_pool = self.pool_name
                cb.add_listener(functools.partial(self._on_transition, backend_id))
            return cb

    def reset(self, settings: BreakerSettings | None, subscribe: bool) -> list[BreakerBase]:
        """New settings (a fleet-wide configuration change): every breaker is made again,
        with them, at its next use (their shared state is in the store and stays). Returns
        the old breakers, retired: the caller closes them (they leave the event bus and
        the store prober; a call still holding one finishes with it)."""
        with self._lock:
            self.settings = settings
            if settings is not None and not subscribe:
                self.settings = settings.replace(subscribe=False)
            old = list(self._breakers.values())
            self._breakers = {}
            self._open_ids.clear()
        return old

    def all(self) -> Iterable[BreakerBase]:
        """Every breaker made so far (to close them)."""
        with self._lock:
            return list(self._breakers.values())

    def state_of(self, backend_id: str) -> str:
        """"closed", "open", "half_open" as this process last saw it; "-" without breakers."""
        if self.settings is None:
            return "-"
        cb = self._breakers.get(backend_id)
        return (cb.known_state or "closed") if cb is not None else "closed"

    @property
    def watching(self) -> bool:
        """Whether any breaker was seen open or refusing (else nothing to look at)."""
        return bool(self._open_ids)

    def refused(self, backend_id: str) -> None:
        """A call was refused by this backend's breaker: look at it from now on."""
        self._open_ids.add(backend_id)

    def _on_transition(self, backend_id: str, transition: Transition) -> None:
        if transition.to_state == "closed":
            self._open_ids.discard(backend_id)
        else:
            self._open_ids.add(backend_id)

    def refusing(self, now: float) -> frozenset[str]:
        """Backends whose breaker this process knows to refuse calls now (no round trip)."""
        if not self._open_ids:
            return frozenset()
        out = set()
        for bid in list(self._open_ids):
            cb = self._breakers.get(bid)
            fast = cb.local_attempt(now) if cb is not None else None
            if fast is not None and not fast.allowed:
                out.add(bid)
        return frozenset(out)

    def due_probe(self, snapshot: tuple[Backend, ...], tried: set[str],
                  now: float) -> Backend | None:
        """A backend whose breaker may take a probe now (its open timeout has passed).

        Probes go to it whatever the strategy would pick: a strategy that scores by
        past errors (adaptive) would otherwise never send a recovering backend the
        calls that let its breaker close. At most one try per ``probe_interval_s``
        per backend and process; the breaker still rations probes fleet-wide.
        """
        if not self._open_ids:
            return None
        by_id = {b.id: b for b in snapshot}
        for bid in list(self._open_ids):
            cb, b = self._breakers.get(bid), by_id.get(bid)
            if cb is None or b is None or not b.healthy or bid in tried:
                continue
            if cb.local_attempt(now) is not None:
                continue                      # known closed or still open: not due
            if now < self._next_probe.get(bid, 0.0):
                continue
            self._next_probe[bid] = now + self.probe_interval_s
            return b
        return None
