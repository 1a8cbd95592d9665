"""The hashing strategies' fast paths give exactly the answers of the plain algorithms."""

from __future__ import annotations

import bisect
import hashlib
import random
from array import array

import pytest

from distlb import Backend, ConsistentHashBalancer, Context, MaglevBalancer, NoBackendAvailable
from distlb.strategies.consistent_hash import RendezvousHashBalancer, _Layout, _make_lookup
from distlb.strategies.hashing import xxh3_64

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


# Key -> backend mappings computed with the code before the fast-path rework (2026-11-30):
# every process of a fleet must keep sending a key where it went before an upgrade.
# (hash, backends): {path: (sha256 of the 2003 picks joined by newlines, first three picks)}
PINNED: dict[tuple[str, int], dict[str, tuple[str, list[str]]]] = {
    ("xxhash", 5): {"lookup": ("b8a3c820ba85ebf3", ["node0", "node0", "node4"]),
                    "select": ("9b53ba10d5400811", ["node0", "node0", "node4"]),
                    "bounded": ("9b53ba10d5400811", ["node0", "node0", "node4"]),
                    "maglev": ("d5ff2f86eee49a4a", ["node2", "node2", "node2"])},
    ("xxhash", 100): {"lookup": ("deeda7ef7db66e77", ["node67", "node91", "node16"]),
                      "select": ("80117e83fecad99d", ["node67", "node91", "node16"]),
                      "bounded": ("80117e83fecad99d", ["node67", "node91", "node16"]),
                      "maglev": ("a474908fbf9488d4", ["node72", "node74", "node58"])},
    ("fnv1a", 5): {"lookup": ("3c7d7ba55a4fec70", ["node4", "node4", "node0"]),
                   "select": ("11b8a046c188556c", ["node4", "node4", "node0"]),
                   "bounded": ("11b8a046c188556c", ["node4", "node4", "node0"]),
                   "maglev": ("38e0433aec0e04f3", ["node2", "node4", "node1"])},
    ("fnv1a", 100): {"lookup": ("45b021ed0c9ec07f", ["node67", "node94", "node63"]),
                     "select": ("20d90829ddd250bb", ["node67", "node58", "node63"]),
                     "bounded": ("20d90829ddd250bb", ["node67", "node58", "node63"]),
                     "maglev": ("c7e62799d710f089", ["node22", "node97", "node25"])},
    ("crc32", 5): {"lookup": ("fc827c7d15e6a3c8", ["node1", "node3", "node1"]),
                   "select": ("4367db7f2fce342f", ["node1", "node0", "node1"]),
                   "bounded": ("4367db7f2fce342f", ["node1", "node0", "node1"]),
                   "maglev": ("9d9a8eee380ca8e0", ["node4", "node4", "node2"])},
    ("crc32", 100): {"lookup": ("abc5b84f0aed310c", ["node77", "node42", "node32"]),
                     "select": ("48e55b4b4dda9809", ["node77", "node42", "node32"]),
                     "bounded": ("48e55b4b4dda9809", ["node77", "node42", "node32"]),
                     "maglev": ("f336c9d68dad1d31", ["node39", "node90", "node57"])},
}
PIN_KEYS = [f"user{i}" for i in range(2000)] + ["", "é", "x" * 300]


@pytest.mark.parametrize("hash_name, n", list(PINNED))
def test_keys_go_where_they_went_before(hash_name: str, n: int) -> None:
    """Same key -> same backend as before, for every hash function and every path
    (lookup, select, select_key, bounded loads, Maglev); one backend in seven down."""
    rng = random.Random(n)
    snap = tuple(Backend(f"node{i}", weight=rng.randint(1, 200), healthy=i % 7 != 3)
                 for i in range(n))

    def pinned(ids: list[str]) -> tuple[str, list[str]]:
        return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16], ids[:3]

    ring = ConsistentHashBalancer(hash=hash_name)
    ring.build(snap)
    bounded = ConsistentHashBalancer(hash=hash_name, bounded_load=1.25)
    maglev = MaglevBalancer(hash=hash_name, table_size=4099)
    want = PINNED[hash_name, n]
    assert pinned([ring.lookup(k) for k in PIN_KEYS]) == want["lookup"]
    assert pinned([ring.select(snap, Context(key=k)).id for k in PIN_KEYS]) == want["select"]
    assert pinned([ring.select_key(snap, k).id for k in PIN_KEYS]) == want["select"]
    assert pinned([ring.select(snap, Context(client_id=k)).id for k in PIN_KEYS]) \
        == want["select"]
    assert pinned([bounded.select(snap, Context(key=k)).id for k in PIN_KEYS]) == want["bounded"]
    assert pinned([maglev.select(snap, Context(key=k)).id for k in PIN_KEYS]) == want["maglev"]
    assert pinned([maglev.select_key(snap, k).id for k in PIN_KEYS]) == want["maglev"]
    # a list snapshot (no snapshot cache) answers alike
    assert pinned([ring.select(list(snap), Context(key=k)).id for k in PIN_KEYS]) \
        == want["select"]
    assert pinned([maglev.select(list(snap), Context(key=k)).id for k in PIN_KEYS]) \
        == want["maglev"]


def test_lookup_follows_the_ring_through_empty_and_back() -> None:
    """``lookup`` is the ring's own function once built; an empty ring raises again."""
    ring = ConsistentHashBalancer()
    with pytest.raises(NoBackendAvailable):
        ring.lookup("k")
    backends = tuple(Backend(f"b{i}") for i in range(4))
    ring.build(backends)
    owner = ring.lookup("k")
    assert owner in {b.id for b in backends}
    assert ring.lookup.__doc__ == ConsistentHashBalancer.lookup.__doc__
    ring.build(tuple(b.with_(weight=0) for b in backends))
    with pytest.raises(NoBackendAvailable):
        ring.lookup("k")
    ring.build(backends[:2])
    assert ring.lookup("k") in {"b0", "b1"}
    ring.build(backends)
    assert ring.lookup("k") == owner


def test_a_ring_of_more_owners_than_16_bit_indexes_hold() -> None:
    """Past 65534 backends the owner indexes are 32-bit; answers stay a plain bisect's."""
    rng = random.Random(5)
    points = array("Q", sorted(rng.getrandbits(64) for _ in range(70_000)))
    owners = [f"b{i}" for i in range(70_000)]
    layout = _Layout(points, owners)
    assert layout.owner.typecode == "I" and layout.mark == 0xFFFFFFFF
    lookup = _make_lookup(layout, xxh3_64)
    assert lookup is not None
    for key in KEYS[:2000]:
        expected = owners[bisect.bisect(points, xxh3_64(key.encode())) % len(points)]
        assert lookup(key) == expected


def test_maglev_fast_path_follows_new_snapshots_and_exclusions() -> None:
    backends = tuple(Backend(f"b{i}") for i in range(5))
    maglev = MaglevBalancer(table_size=1009)
    first = maglev.select_key(backends, "k").id
    assert maglev.select(backends, Context(client_id="k")).id == first
    # a new snapshot with the owner down: the picker follows it, as a fresh balancer would
    down = tuple(b.with_(healthy=b.id != first) for b in backends)
    moved = maglev.select_key(down, "k").id
    assert moved != first
    assert moved == MaglevBalancer(table_size=1009).select(list(down), Context(key="k")).id
    # an exclusion takes the slow path and leaves the fast one unharmed
    assert maglev.select(backends, Context(key="k").excluding(first)).id != first
    assert maglev.select(backends, Context(key="k")).id == first
    with pytest.raises(NoBackendAvailable):
        maglev.select_key(tuple(b.with_(healthy=False) for b in backends), "k")


def test_a_new_bounded_load_applies_to_the_snapshot_already_cached() -> None:
    """``configure(bounded_load=...)`` (a pool's ``strategy.bounded_load``) drops the cached
    per-snapshot picker, which is only ever built without bounded loads: the very next
    ``select`` on the same snapshot walks past a backend over its bound."""
    ring = ConsistentHashBalancer()
    backends = tuple(Backend(f"b{i}") for i in range(5))
    owner = ring.select(backends, Context(key="k")).id
    loaded = tuple(b.with_(active_connections=100 if b.id == owner else 0) for b in backends)
    assert ring.select(loaded, Context(key="k")).id == owner      # picker cached, no bound
    assert ring.select(loaded, Context(key="k")).id == owner
    ring.configure(bounded_load=1.25)
    assert ring.select(loaded, Context(key="k")).id != owner
    ring.configure(bounded_load=None)
    assert ring.select(loaded, Context(key="k")).id == owner


@pytest.mark.parametrize("ring", [ConsistentHashBalancer, MaglevBalancer])
@pytest.mark.parametrize("key", [123, b"x", None])
def test_a_key_that_is_not_a_str_is_a_config_error(ring: type, key: object) -> None:
    from distlb import ConfigError

    backends = tuple(Backend(f"b{i}") for i in range(3))
    strategy = ring()
    strategy.select_key(backends, "warm")                 # the cached picker too
    with pytest.raises(ConfigError, match="key: must be a str"):
        strategy.select_key(backends, key)
    if key is not None:                                   # None is "no key" in a Context
        with pytest.raises(ConfigError, match="key: must be a str"):
            Context(key=key)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="client_id: must be a str"):
            Context(client_id=key)  # type: ignore[arg-type]
