"""Consistent hashing: a ring with virtual nodes and bounded loads, rendezvous, Maglev."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence

from distlb._validate import integer, number
from distlb.errors import ConfigError
from distlb.strategies.base import Backend, Base, Context, NoBackendAvailable
from distlb.strategies.hashing import MASK64, HashFn, hash_function


def _key_of(ctx: Context | None) -> bytes:
    if ctx is None or (ctx.key is None and ctx.client_id is None):
        raise ConfigError("ctx", "hashing strategies need a context with a key or client_id")
    return (ctx.key if ctx.key is not None else ctx.client_id or "").encode()


class ConsistentHashBalancer(Base):
    """A hash ring with ``vnodes`` virtual nodes per backend (weight-aware).

    A backend of weight ``w`` gets ``round(vnodes x w / mean weight)`` points on the
    ring; a key goes to the first point clockwise from its hash. Adding or removing
    one of ``n`` backends moves about ``1/n`` of the keys and no others. Unhealthy
    backends are skipped (their keys go to the next point) without rebuilding, so
    keys of healthy backends never move when another goes down.

    Bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018), with ``bounded_load=c``:
    no backend takes more than ``ceil(c x (total load + 1) / n)`` active connections;
    a key whose backend is full walks on to the next one with room.

    O(log(n x vnodes)) a lookup; the ring is rebuilt only when backends or weights change.
    """

    def __init__(self, *, vnodes: int = 150, hash: str = "xxhash",
                 bounded_load: float | None = None) -> None:
        super().__init__()
        self.vnodes = integer("vnodes", vnodes, low=1, high=10_000)
        self.hash_name = hash
        self._hash = hash_function(hash)
        self.bounded_load = None if bounded_load is None else number(
            "bounded_load", bounded_load, low=1, low_inclusive=True, high=100)
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int], ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._lookup: Callable[[str], str] | None = None
        self._ring_source: Sequence[Backend] | None = None

    def lookup(self, key: str) -> str:
        """The id of the backend owning ``key`` on the ring built by the last ``select``
        or ``build`` call, ignoring health and loads: the fast path for affinity maps
        (like uhashring's ``get_node``). O(log(n x vnodes))."""
        if self._lookup is None:
            raise NoBackendAvailable("the ring is empty: call build() or select() first")
        return self._lookup(key)

    def build(self, backends: Sequence[Backend]) -> None:
        """Build (or keep) the ring for these backends."""
        self._ring(backends)

    def _ring(self, backends: Sequence[Backend]) -> tuple[list[int], list[str]]:
        if backends is self._ring_source:   # the same immutable snapshot as last time
            return self._points, self._owners
        signature = tuple(sorted((b.id, b.weight) for b in backends if b.weight > 0))
        with self._lock:
            if isinstance(backends, tuple):
                self._ring_source = backends
            if signature != self._signature:
                mean = sum(w for _, w in signature) / max(1, len(signature))
                ring: list[tuple[int, str]] = []
                for bid, weight in signature:
                    count = max(1, round(self.vnodes * weight / mean))
                    ring.extend((self._hash(f"{bid}#{i}".encode()), bid) for i in range(count))
                ring.sort()
                self._points = [p for p, _ in ring]
                self._owners = [o for _, o in ring]
                self._signature = signature
                self._lookup = _make_lookup(self._points, self._owners, self._hash)
            return self._points, self._owners

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._by_id(self._candidates(backends, ctx))
        points, owners = self._ring(backends)
        start = bisect.bisect(points, self._hash(_key_of(ctx)))
        cap = math.inf
        if self.bounded_load is not None:
            total = sum(b.active_connections for b in pool.values())
            cap = math.ceil(self.bounded_load * (total + 1) / len(pool))
        seen: set[str] = set()
        n = len(points)
        for step in range(n):
            bid = owners[(start + step) % n]
            if bid in seen:
                continue
            seen.add(bid)
            b = pool.get(bid)
            if b is not None and b.active_connections < cap:
                return b
            if len(seen) == len(self._signature):
                break
        raise NoBackendAvailable("every healthy backend is at its bounded load")


def _make_lookup(points: list[int], owners: list[str],
                 hash_fn: HashFn) -> Callable[[str], str] | None:
    """A lookup with everything bound locally: encode, hash, bisect, index (the
    wrap-around is a copy of the first owner at the end, so no modulo)."""
    if not points:
        return None
    wrapped = [*owners, owners[0]]

    def lookup(key: str, _bisect: Callable[[list[int], int], int] = bisect.bisect,
               _points: list[int] = points, _owners: list[str] = wrapped,
               _hash: HashFn = hash_fn, _encode: Callable[[str], bytes] = str.encode) -> str:
        return _owners[_bisect(_points, _hash(_encode(key)))]

    return lookup


class RendezvousHashBalancer(Base):
    """Highest random weight (rendezvous) hashing, weighted (Schindelhauer & Schomaker).

    Each backend scores ``-weight / ln(h(key, backend) / 2^64)``; the highest wins.
    No ring to build; removing a backend moves only its own keys. O(n) a lookup.
    """

    def __init__(self, *, hash: str = "xxhash") -> None:
        super().__init__()
        self.hash_name = hash
        self._hash = hash_function(hash)

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        key = _key_of(ctx) + b"|"
        best: Backend | None = None
        best_score = -math.inf
        for b in self._candidates(backends, ctx):
            h = (self._hash(key + b.id.encode()) + 1) / (MASK64 + 2)   # in (0, 1)
            score = -b.weight / math.log(h)
            if score > best_score:
                best, best_score = b, score
        assert best is not None
        return best


class MaglevBalancer(Base):
    """Maglev hashing (Eisenbud et al., NSDI 2016), as in Envoy and gRPC.

    A lookup table of ``table_size`` entries (a prime) is filled by each backend in
    turn, following its own permutation (offset, skip from two hashes); a backend of
    weight ``w`` takes turns in proportion to ``w``. Lookups are O(1); the table is
    built from the healthy backends (a few recent tables are cached), so adding or
    removing a backend, or one going down, moves its keys and a few more: about
    ``1/n`` of all keys.
    """

    def __init__(self, *, table_size: int = 65537, hash: str = "xxhash") -> None:
        super().__init__()
        self.table_size = integer("table_size", table_size, low=7, high=5_000_011)
        if any(self.table_size % p == 0 for p in range(2, int(self.table_size ** 0.5) + 1)):
            raise ConfigError("table_size", f"must be a prime, got {table_size}")
        self.hash_name = hash
        self._hash = hash_function(hash)
        self._lock = threading.Lock()
        self._tables: dict[tuple[tuple[str, int], ...], list[str]] = {}
        self._last: tuple[Sequence[Backend] | None, list[str]] = (None, [])

    def _table(self, pool: Sequence[Backend]) -> list[str]:
        if pool is self._last[0]:           # the same filtered pool as last time
            return self._last[1]
        signature = tuple(sorted((b.id, b.weight) for b in pool))
        with self._lock:
            table = self._tables.get(signature)
            if table is None:
                if len(self._tables) > 8:
                    self._tables.clear()
                table = self._tables[signature] = self._build(signature)
            self._last = (pool, table)
            return table

    def _build(self, signature: tuple[tuple[str, int], ...]) -> list[str]:
        m = self.table_size
        ids = [bid for bid, _ in signature]
        weights = [w for _, w in signature]
        top = max(weights)
        offsets = [self._hash(f"{bid}#offset".encode()) % m for bid in ids]
        skips = [self._hash(f"{bid}#skip".encode()) % (m - 1) + 1 for bid in ids]
        nexts = [0] * len(ids)
        credit = [0.0] * len(ids)
        table: list[str | None] = [None] * m
        filled = 0
        while True:
            for i, bid in enumerate(ids):
                credit[i] += weights[i] / top
                if credit[i] < 1:
                    continue
                credit[i] -= 1
                slot = (offsets[i] + nexts[i] * skips[i]) % m
                while table[slot] is not None:
                    nexts[i] += 1
                    slot = (offsets[i] + nexts[i] * skips[i]) % m
                table[slot] = bid
                nexts[i] += 1
                filled += 1
                if filled == m:
                    return [t for t in table if t is not None]

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        pool = self._candidates(backends, ctx)
        table = self._table(pool)
        return self._by_id(pool)[table[self._hash(_key_of(ctx)) % self.table_size]]
