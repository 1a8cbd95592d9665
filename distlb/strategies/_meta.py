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
