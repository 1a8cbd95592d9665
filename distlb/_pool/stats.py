"""A pool's statistics as ``get_statistics()`` reports them, from the local view.

Pure: the pool reads a fresh snapshot first, then ``summarize`` builds the report from
the snapshot, the shared statistics hash and each backend's breaker state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from distlb.strategies.base import Backend


@dataclass(frozen=True, slots=True)
class BackendStats:
    """One backend's shared statistics, as ``get_statistics()`` reports them."""

    id: str
    address: str
    weight: int
    healthy: bool
    breaker: str                 #: "closed", "open", "half_open", or "-" without breakers
    active_connections: int
    requests: int
    errors: int
    error_rate: float            #: moving average over recent requests
    latency_ms: float            #: moving average over recent requests
    throughput_per_s: float      #: completed requests per second since the last refresh


@dataclass(frozen=True, slots=True)
class Statistics:
    """The pool at a glance. ``str()`` is a one-line summary."""

    backends: int
    healthy: int
    connections: int
    avg_response_ms: float
    per_backend: tuple[BackendStats, ...] = ()

    def __str__(self) -> str:
        return (f"Backends: {self.healthy}/{self.backends}, Connections: {self.connections}, "
                f"Avg Response: {self.avg_response_ms:.2f}ms")


def summarize(snapshot: Sequence[Backend], stats: Mapping[str, float],
              breaker_state: Callable[[str], str]) -> Statistics:
    """The report for ``snapshot`` (the view's backends), ``stats`` (the ``:stats`` hash:
    ``<id>:requests``, ``<id>:errors``) and ``breaker_state(id)``. ``avg_response_ms`` is
    the mean latency of the backends that answered at least one request (ms)."""
    per = tuple(BackendStats(
        b.id, b.address, b.weight, b.healthy, breaker_state(b.id), b.active_connections,
        int(stats.get(f"{b.id}:requests", 0)), int(stats.get(f"{b.id}:errors", 0)),
        b.error_rate, b.latency_ms, b.throughput_per_s) for b in snapshot)
    answered = [s for s in per if s.requests]
    avg = sum(s.latency_ms for s in answered) / len(answered) if answered else 0.0
    return Statistics(len(per), sum(s.healthy for s in per),
                      sum(s.active_connections for s in per), avg, per)
