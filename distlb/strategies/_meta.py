"""Reading the well-known ``Backend.metadata`` fields that strategies use.

Metadata is free-form JSON written by whoever registered the backend, so a field of
the wrong type or range is treated as absent (never an error at selection time):
one badly registered backend must not stop every process from balancing.

* ``region``, ``zone`` (non-empty str): where the backend runs (``LocalityAwareBalancer``).
* ``capacity`` (number > 0): concurrent requests the backend serves at its nominal
  latency (``LocalityAwareBalancer``, ``CostAwareBalancer``).
* ``cost`` (number >= 0): the price of one request, in any unit the pool shares
  (``CostAwareBalancer``).
"""

from __future__ import annotations

import math

from distlb.strategies.base import Backend


def text(b: Backend, name: str) -> str | None:
    """``metadata[name]`` if it is a non-empty str, else None."""
    value = b.metadata.get(name)
    return value if isinstance(value, str) and value else None


def number(b: Backend, name: str, *, positive: bool) -> float | None:
    """``metadata[name]`` if it is a finite number (> 0 if ``positive``, else >= 0)."""
    value = b.metadata.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        return None
    return v


class Parsed:
    """The well-known fields of one backend's metadata, parsed once."""

    __slots__ = ("capacity", "cost", "region", "source", "zone")

    def __init__(self, b: Backend) -> None:
        self.source = b.metadata          # held, so its identity cannot be reused
        self.region = text(b, "region")
        self.zone = text(b, "zone")
        self.cost = number(b, "cost", positive=False)
        self.capacity = number(b, "capacity", positive=True)


class Cache:
    """Parsed metadata per backend id, valid while the backend carries the same metadata
    object: the pool's snapshots share it between refreshes (only counts change on the
    hot path), so a pick does not re-read every backend's JSON fields."""

    def __init__(self) -> None:
        self._parsed: dict[str, Parsed] = {}

    def get(self, b: Backend) -> Parsed:
        p = self._parsed.get(b.id)
        if p is None or p.source is not b.metadata:
            if len(self._parsed) > 65536:   # ids churned: start again
                self._parsed = {}
            p = self._parsed[b.id] = Parsed(b)
        return p

    def known(self, backend_id: str) -> Parsed | None:
        """The last parsed metadata of a backend id, if any was seen."""
        return self._parsed.get(backend_id)
