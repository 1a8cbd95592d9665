"""The hashing strategies' fast paths give exactly the answers of the plain algorithms."""

from __future__ import annotations

import bisect
import random

import pytest

from distlb import Backend, ConsistentHashBalancer, Context, MaglevBalancer, NoBackendAvailable
from distlb.strategies.consistent_hash import RendezvousHashBalancer

KEYS = [f"user{i}" for i in range(3000)] + ["", "é", "x" * 300]


def walk(ring: ConsistentHashBalancer, backends: tuple[Backend, ...], key: str) -> str:
    """The ring's definition: the first healthy owner clockwise from the key's hash."""
    points, owners = ring._ring(backends)
    healthy = {b.id for b in backends if b.healthy and b.weight > 0}
    start = bisect.bisect(points, ring._hash(key.encode()))
    for step in range(len(points)):
        owner = owners[(start + step) % len(points)]
        if owner in healthy:
            return owner
    raise AssertionError("no healthy owner")


@pytest.mark.parametrize("n, vnodes", [(1, 1), (3, 5), (20, 150), (300, 150)])
@pytest.mark.parametrize("hash_name", ["xxhash", "crc32"])
def test_ring_fast_paths_match_the_walk(n: int, vnodes: int, hash_name: str) -> None:
    rng = random.Random(n * vnodes)
    backends = tuple(Backend(f"b{i}", weight=rng.randint(1, 200)) for i in range(n))
    ring = ConsistentHashBalancer(vnodes=vnodes, hash=hash_name)
    ring.build(backends)
    points, owners = ring._ring(backends)
    for key in KEYS:
        # lookup: the owner of the first point after the hash, health ignored
        expected = owners[bisect.bisect(points, ring._hash(key.encode())) % len(points)]
        assert ring.lookup(key) == expected
        assert ring.select_key(backends, key).id == walk(ring, backends, key)
        assert ring.select(backends, Context.with_key(key)).id == walk(ring, backends, key)
    # some backends go down: their keys move on to the next healthy point, others stay
    down = {f"b{i}" for i in range(n) if rng.random() < 0.4} if n > 1 else set()
    snap = tuple(b.with_(healthy=b.id not in down) for b in backends)
    for key in KEYS:
        picked = ring.select_key(snap, key).id
        assert picked == walk(ring, snap, key) and picked not in down
        if walk(ring, backends, key) not in down:
            assert picked == walk(ring, backends, key)


def test_ring_fast_path_follows_new_snapshots_and_exclusions() -> None:
    backends = tuple(Backend(f"b{i}") for i in range(5))
    ring = ConsistentHashBalancer()
    first = ring.select_key(backends, "k").id
    # a snapshot that only changed counts keeps the answer
    counted = tuple(b.with_(active_connections=7) for b in backends)
    assert ring.select_key(counted, "k").id == first
    # excluding the owner moves the key (the slow path), and the fast path is unharmed
    moved = ring.select(counted, Context.with_key("k").excluding(first)).id
    assert moved != first
    assert ring.select_key(counted, "k").id == first
    gone = tuple(b.with_(healthy=False) for b in counted)
    with pytest.raises(NoBackendAvailable):
        ring.select_key(gone, "k")


@pytest.mark.parametrize("make", [MaglevBalancer, RendezvousHashBalancer,
                                  lambda: ConsistentHashBalancer(bounded_load=1.25)])
def test_select_key_is_select_with_a_key(make: object) -> None:
    s = make()  # type: ignore[operator]
    backends = tuple(Backend(f"b{i}", active_connections=i) for i in range(7))
    for key in KEYS[:500]:
        assert s.select_key(backends, key) == s.select(backends, Context.with_key(key))


def test_a_snapshot_with_new_counts_reuses_the_resolved_ring() -> None:
    """The pool hands strategies a new tuple whenever connection counts move: that
    must cost O(backends), not a pass over the ring's table."""
    backends = tuple(Backend(f"b{i}") for i in range(50))
    ring = ConsistentHashBalancer()
    ring.select_key(backends, "k")
    resolved = ring._resolved[2]
    for n in range(5):
        ring.select_key(tuple(b.with_(active_connections=n) for b in backends), "k")
    assert ring._resolved[2] is resolved
    ring.select_key(tuple(b.with_(healthy=b.id != "b3") for b in backends), "k")
    assert ring._resolved[2] is not resolved
