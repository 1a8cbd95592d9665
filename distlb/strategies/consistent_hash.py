"""Consistent hashing: a ring with virtual nodes and bounded loads, rendezvous, Maglev."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distlb._validate import integer, number
from distlb.errors import ConfigError
from distlb.strategies.base import Backend, Base, Context, NoBackendAvailable, Param
from distlb.strategies.hashing import MASK64, HashFn, hash_function


def _key_str(ctx: Context | None) -> str:
    if ctx is None or (ctx.key is None and ctx.client_id is None):
        raise ConfigError("ctx", "hashing strategies need a context with a key or client_id")
    return ctx.key if ctx.key is not None else ctx.client_id or ""


def _key_of(ctx: Context | None) -> bytes:
    return _key_str(ctx).encode()


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

    O(log(n x vnodes)) a lookup; the ring is rebuilt only when backends or weights change,
    or ``vnodes`` (``configure(vnodes=...)``, a pool's ``strategy.vnodes``).
    """

    config_params = (Param("vnodes", int, 1, 10_000),
                     Param("bounded_load", float, 1, 100, optional=True))

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
        self._tables: tuple[list[int], list[int], int] = _tables([])
        #: (tables, healthy ids, resolved owner per ring index, resolved owner per bucket)
        self._resolved: tuple[Any, frozenset[str], list[str], list[str | None]] = (
            None, frozenset(), [], [])
        self._fast: tuple[Sequence[Backend] | None, Callable[[str], Backend]] = (
            None, self._no_pick)

    @staticmethod
    def _no_pick(key: str) -> Backend:
        raise NoBackendAvailable("the ring is empty")

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
                self._build_ring(signature)
            return self._points, self._owners

    def _build_ring(self, signature: tuple[tuple[str, int], ...]) -> None:
        """The ring of ``signature`` (id, weight) with ``vnodes`` (under ``_lock``)."""
        mean = sum(w for _, w in signature) / max(1, len(signature))
        ring: list[tuple[int, str]] = []
        for bid, weight in signature:
            count = max(1, round(self.vnodes * weight / mean))
            ring.extend((self._hash(f"{bid}#{i}".encode()), bid) for i in range(count))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [o for _, o in ring]
        self._signature = signature
        self._tables = _tables(self._points)
        self._lookup = _make_lookup(self._points, self._owners, self._hash)

    def _reconfigured(self, changed: frozenset[str]) -> None:
        """A new ``vnodes`` (fleet-wide configuration): the ring of the backends it was
        built for is rebuilt now, and the per-snapshot pickers dropped, so the next
        lookup already uses it (a registry change is not needed)."""
        if "vnodes" not in changed:
            return
        with self._lock:
            if self._lookup is not None:
                self._build_ring(self._signature)
            self._ring_source = None
            self._fast = (None, self._no_pick)

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        if self.bounded_load is None and ctx is not None and not ctx.exclude \
                and ctx.key is not None:
            fast = self._fast
            return (fast[1] if fast[0] is backends else self._picker(backends))(ctx.key)
        if self.bounded_load is None and (ctx is None or not ctx.exclude):
            return self._picker(backends)(_key_str(ctx))
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

    def select_key(self, backends: Sequence[Backend], key: str) -> Backend:
        """``select(backends, Context(key=key))`` without a Context: the plain key case."""
        if self.bounded_load is not None:
            return self.select(backends, Context(key=key))
        fast = self._fast
        return (fast[1] if fast[0] is backends else self._picker(backends))(key)

    def _picker(self, backends: Sequence[Backend]) -> Callable[[str], Backend]:
        """key -> the first healthy backend clockwise from the key's hash, for this snapshot.

        Built once per snapshot: every ring position is resolved to the first healthy
        owner at or after it (unhealthy backends are skipped, their keys go on to the
        next point, exactly as the walk in ``select`` does), so a pick is one hash and
        one index lookup. Resolutions are kept while the set of healthy ids is the
        same, so a snapshot that only changed connection counts costs O(n), not a
        pass over the ring.
        """
        if self._fast[0] is backends:
            return self._fast[1]
        by_id = self._by_id(self._candidates(backends, None))
        self._ring(backends)
        tables, points, hash_fn = self._tables, self._points, self._hash
        starts, direct, shift = tables
        ids = frozenset(by_id)
        cached = self._resolved
        if cached[0] is tables and cached[1] == ids:
            resolved, direct_id = cached[2], cached[3]
        else:
            resolved = _resolve(self._owners, ids)
            # the resolved owner by bucket where the bucket holds no point, as in _make_lookup
            direct_id = [resolved[i] if i >= 0 else None for i in direct]
            self._resolved = (tables, ids, resolved, direct_id)

        def pick(key: str, _bisect: Callable[..., int] = bisect.bisect) -> Backend:
            h = hash_fn(key.encode())
            b = h >> shift
            owner = direct_id[b]
            if owner is None:
                owner = resolved[_bisect(points, h, starts[b], starts[b + 1])]
            return by_id[owner]

        if isinstance(backends, tuple):
            self._fast = (backends, pick)
        return pick


def _is_prime(n: int) -> bool:
    return n >= 2 and not any(n % p == 0 for p in range(2, int(n ** 0.5) + 1))


def _resolve(owners: list[str], healthy: frozenset[str]) -> list[str]:
    """For each ring index 0..n (n wraps to 0), the first owner at or after it in
    ``healthy``."""
    n = len(owners)
    out = [""] * (n + 1)
    nxt = ""
    for i in range(2 * n - 1, -1, -1):
        owner = owners[i % n]
        if owner in healthy:
            nxt = owner
        if i < n:
            out[i] = nxt
    out[n] = out[0]
    return out


def _tables(points: list[int]) -> tuple[list[int], list[int], int]:
    """A table over the top bits of the hash (about two buckets per point): ``direct[b]``
    is the answer for every hash in bucket ``b`` when no point falls inside it (most
    buckets), else -1 and the search runs over ``starts[b]:starts[b + 1]`` only. The
    same answer as a plain bisect, several times faster on rings of 100k+ points,
    where a full bisect misses the CPU caches."""
    n = len(points)
    bits = max(4, min(18, (2 * n).bit_length()))
    shift = 64 - bits
    starts = [bisect.bisect_left(points, b << shift) for b in range(1 << bits)]
    starts.append(n)
    direct = [starts[b] if starts[b] == starts[b + 1] else -1 for b in range(1 << bits)]
    return starts, direct, shift


def _make_lookup(points: list[int], owners: list[str],
                 hash_fn: HashFn) -> Callable[[str], str] | None:
    """key -> owner id on the whole ring (health ignored): ``_make_index`` with the
    owner read in the same frame (the hot path of affinity maps). The wrap-around is a
    copy of the first owner at the end, so no modulo."""
    if not points:
        return None
    starts, direct, shift = _tables(points)
    wrapped = [*owners, owners[0]]
    # owner by bucket where the bucket holds no point: one index, no search
    direct_owner = [wrapped[i] if i >= 0 else None for i in direct]

    def lookup(key: str, _bisect: Callable[..., int] = bisect.bisect,
               _points: list[int] = points, _hash: HashFn = hash_fn,
               _starts: list[int] = starts, _direct: list[str | None] = direct_owner,
               _owners: list[str] = wrapped, _shift: int = shift) -> str:
        h = _hash(key.encode())
        b = h >> _shift
        owner = _direct[b]
        if owner is not None:
            return owner
        return _owners[_bisect(_points, h, _starts[b], _starts[b + 1])]

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
        if not _is_prime(self.table_size):
            raise ConfigError("table_size", f"must be a prime, got {table_size}")
        self.hash_name = hash
        self._hash = hash_function(hash)
        self._lock = threading.Lock()
        self._tables: dict[tuple[tuple[str, int], ...], list[str]] = {}
        self._last: tuple[Sequence[Backend] | None, list[str]] = (None, [])

    config_params = (Param("table_size", int, 7, 5_000_011),)

    def check_config(self, values: Mapping[str, int | float | None]) -> None:
        size = values.get("table_size")
        if size is not None and not _is_prime(int(size)):
            raise ConfigError("strategy.table_size", f"must be a prime, got {size}")

    def _reconfigured(self, changed: frozenset[str]) -> None:
        """A new ``table_size``: the cached tables are dropped and the last one is rebuilt
        now, so the next lookup already uses the new size."""
        if "table_size" not in changed:
            return
        with self._lock:
            pool = self._last[0]
            self._tables.clear()
            self._last = (None, [])
        if pool is not None:
            self._table(pool)

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
        # len(table) == table_size; read from the table itself, so a concurrent
        # configure(table_size=...) never pairs a new size with an old table.
        return self._by_id(pool)[table[self._hash(_key_of(ctx)) % len(table)]]

    def select_key(self, backends: Sequence[Backend], key: str) -> Backend:
        """``select(backends, Context(key=key))`` without a Context: the plain key case."""
        pool = self._candidates(backends, None)
        table = self._table(pool)
        return self._by_id(pool)[table[self._hash(key.encode()) % len(table)]]
