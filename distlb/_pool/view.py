"""A pool's local view: the registry, connection counts and statistics as this process
last saw them, and the backends strategies select from.

Every pool.lua reply is applied here (``apply``); selection reads ``snapshot``. The view
decides when a snapshot read is due (``due``): older than ``refresh_s``, or marked stale
by a registry event.
"""

from __future__ import annotations

import math
import threading

from distlb._core import pool as pl
from distlb.strategies import Backend

_SET = object.__setattr__


def counted(b: Backend, active_connections: int) -> Backend:
    """``b`` with another connection count: what ``dataclasses.replace`` does, without
    validating again what the snapshot validated already (the hot path's one change)."""
    c = object.__new__(Backend)
    _SET(c, "id", b.id)
    _SET(c, "address", b.address)
    _SET(c, "weight", b.weight)
    _SET(c, "healthy", b.healthy)
    _SET(c, "active_connections", active_connections)
    _SET(c, "latency_ms", b.latency_ms)
    _SET(c, "error_rate", b.error_rate)
    _SET(c, "throughput_per_s", b.throughput_per_s)
    _SET(c, "added_at_s", b.added_at_s)
    _SET(c, "metadata", b.metadata)
    return c


class PoolView:
    """The registry token, records, counts and statistics of the last replies (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, pl.Record] = {}
        self.version = ""                 # the registry token of the view; "" = none yet
        self.conns: dict[str, int] = {}
        self.stats: dict[str, float] = {}
        self.refreshed_at = -math.inf
        self.stale = True
        self.offset_s = 0.0               # local clock - server clock, for slow start
        self._tput: dict[str, tuple[float, float, float]] = {}   # id -> (requests, at, rate)
        self._backends: tuple[Backend, ...] = ()
        self._recount = False             # connection counts arrived since _backends was built

    def due(self, now: float, refresh_s: float) -> bool:
        """Whether a snapshot read is due: never read, older than ``refresh_s``, or stale."""
        return self.stale or now - self.refreshed_at >= refresh_s

    def mark_stale(self) -> None:
        """Read a snapshot at the next call (something the view does not show changed)."""
        self.stale = True

    def on_event(self, version: str) -> None:
        """A registry event: the view is stale unless it already has that version."""
        if version != self.version:
            self.stale = True

    def record(self, backend_id: str) -> pl.Record | None:
        with self.lock:
            return self.records.get(backend_id)

    def forget(self, backend_id: str, rec: pl.Record) -> None:
        """Drop a record a compare-and-set found changed (if the view still has that one)."""
        with self.lock:
            if self.records.get(backend_id) is rec:
                self.records.pop(backend_id, None)

    @property
    def snapshot(self) -> tuple[Backend, ...]:
        """The view as strategies see it. Replies of the hot path only move connection
        counts: those are applied here, once per selection rather than once per reply,
        and only the backends whose count changed get a new entry."""
        if self._recount:
            with self.lock:
                if self._recount:
                    conns = self.conns
                    self._backends = tuple(
                        b if conns.get(b.id, 0) == b.active_connections
                        else counted(b, conns.get(b.id, 0)) for b in self._backends)
                    self._recount = False
        return self._backends

    def apply(self, state: pl.PoolState, now: float) -> None:
        """Take in one reply (``now``: the local clock when it arrived)."""
        with self.lock:
            counts_only = state.records is None and state.stats is None and bool(self._backends)
            if state.records is not None:
                self.records = state.records
                self.version = state.version
            self.conns = state.conns
            if state.stats is not None:
                self.stats = state.stats
            if state.server_us:           # 0: a hot op that did not read the clock
                self.offset_s = now - state.server_us / 1e6
            if state.stats is not None:   # a full snapshot: records, counts and statistics
                self.refreshed_at = now
                self.stale = False
            if counts_only:
                self._recount = True      # applied by the next read of snapshot
            else:
                self._backends = self._build(now)
                self._recount = False

    def _build(self, now: float) -> tuple[Backend, ...]:
        out = []
        for bid, r in sorted(self.records.items()):
            requests = self.stats.get(f"{bid}:requests", 0.0)
            prev = self._tput.get(bid)
            rate = prev[2] if prev else 0.0
            if prev is None or now - prev[1] >= 1.0:
                if prev is not None:
                    rate = max(0.0, requests - prev[0]) / (now - prev[1])
                self._tput[bid] = (requests, now, rate)
            out.append(Backend(
                bid, r.address, r.weight, r.healthy, self.conns.get(bid, 0),
                self.stats.get(f"{bid}:latency_ms", 0.0),
                self.stats.get(f"{bid}:error_rate", 0.0), rate,
                r.since_us / 1e6 + self.offset_s, dict(r.metadata)))
        return tuple(out)

    def local_state(self) -> pl.PoolState:
        """The state to keep while the store is unreachable: the last known view."""
        return pl.PoolState("unavailable", self.version, 0, None, self.conns, self.stats)
