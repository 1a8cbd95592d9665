"""Resharding under load (issue #15): the slots of a busy token bucket, leaky bucket,
shaper, breaker, budget and pool move to another primary while three real processes
use them, by Valkey 9's atomic slot migration and by the classic ``MIGRATE`` one key
at a time (clients meet ``MOVED``, ``ASK`` and, for multi-key scripts whose keys are
split between the two nodes, ``TRYAGAIN``, which redis-py turns into ``ClusterError:
TTL exhausted`` after 16 tries).

Asserted: no exception reaches a caller (every cluster error class is the failure
policy's), the store never admits more than the limit allows (no double grants), the
pool's connection counts are exact and its registry intact after the move, and every
primitive ends on the store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from distlb import LoadBalancer
from distlb.embedded import EmbeddedCluster
from tests import cluster_fleet as fl
from tests import cluster_workers as cw

pytestmark = [pytest.mark.cluster, pytest.mark.failover, pytest.mark.multiprocess]

RUN_S = 6.0


@pytest.fixture(scope="module")
def movable() -> Iterator[EmbeddedCluster]:
    """A 3-primary cluster of this module's own: its slots move."""
    with EmbeddedCluster(masters=3) as c:
        yield c


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "classic-migrate"])
def test_slots_move_under_load(movable: EmbeddedCluster, atomic: bool) -> None:
    prefix = f"rs{uuid.uuid4().hex[:8]}"
    source = movable.primaries()[0]
    on_source = lambda slot: movable.primary_of(slot) is source  # noqa: E731
    placement = fl.place(prefix, {"moving": on_source})
    slots = sorted({fl.slot_of(prefix, fl.KIND_OF[k.split("@")[0]], n)
                    for k, n in placement.items()})
    pool = placement["pool@moving"]
    admin = movable.client()
    fl.register(admin, prefix, pool, fl.backend_ids(prefix, pool, [on_source, on_source]))
    dst = next(n for n in movable.primaries() if n is not source)

    def move() -> float:
        started = time.time()
        movable.migrate_slots(slots, dst, atomic=atomic, step_pause_s=0.05)
        return time.time() - started

    try:
        reports, took = fl.run_fleet({"cluster": movable.startup_nodes}, prefix, placement,
                                     RUN_S, move)
        falls = fl.fallbacks(reports)
        print(f"\n{'atomic' if atomic else 'classic'} migration of {len(slots)} slots in "
              f"{took:.2f} s\n  fallbacks: {fl.fmt(falls)}"
              f"\n  on policy (s): {fl.fmt(fl.on_policy_s(reports))}"
              f"\n  slowest call (s): {fl.fmt(fl.slowest_call_s(reports))}")
        assert fl.errors(reports) == {}
        assert all(movable.primary_of(s) is dst for s in slots)
        # No double grants: what the store admitted stays within rate x time + burst.
        assert fl.store_admitted(reports, "bucket@moving") <= \
            cw.BUCKET_RATE * RUN_S + cw.BUCKET_BURST
        for r in reports:
            for name, t in r["tracks"].items():
                assert t["changes"][-1][1] != "policy", f"{name} still on its policy"
        assert fl.final_connections(admin, prefix, pool) == 0
        lb = LoadBalancer(admin, pool, prefix=prefix, subscribe=False)
        assert len(lb.backends()) == 2
        lb.close()
    finally:
        admin.close()


def test_tryagain_outlasting_client_retries_is_the_failure_policy(
        movable: EmbeddedCluster) -> None:
    """A slot left half-moved (keys split between the two nodes) answers a multi-key
    script with TRYAGAIN until the move ends; redis-py gives up after 16 tries with
    ``ClusterError: TTL exhausted``. That is the failure policy's (an outage of that
    one entity), never an exception for the caller, and the pool is back on the store
    as soon as the move ends."""
    prefix = f"rs{uuid.uuid4().hex[:8]}"
    source = movable.primaries()[0]
    dst = next(n for n in movable.primaries() if n is not source)
    pool = fl.pick(prefix, "pool", "held", lambda s: movable.primary_of(s) is source)
    slot = fl.slot_of(prefix, "pool", pool)
    admin = movable.client()
    fl.register(admin, prefix, pool, ["b0", "b1"])
    client = movable.client(**cw.FAST)
    lb = LoadBalancer(client, pool, prefix=prefix, lease_ttl_s=5.0, on_store_error="fail_open",
                      breaker=None, subscribe=False)
    try:
        lb.execute(lambda b: b.id)
        assert lb.store_stats.fallbacks == 0
        movable.begin_migration(slot, dst)
        with source.client() as s:
            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            assert len(keys) >= 2, keys
            s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", keys[0])
        try:
            served = [lb.execute(lambda b: b.id) for _ in range(3)]    # must not raise
            assert set(served) <= {"b0", "b1"}
            assert lb.store_stats.fallbacks >= 1
        finally:
            with source.client() as s:
                while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                    s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                                      "KEYS", *keys)
            movable.end_migration(slot, dst)
        movable.wait_owner(slot, port=dst.port)
        deadline = time.monotonic() + 30
        while True:   # back on the store once the move ended (the prober, at the latest 1 s)
            calls, falls = lb.store_stats.calls, lb.store_stats.fallbacks
            lb.execute(lambda b: b.id)
            if lb.store_stats.calls > calls and lb.store_stats.fallbacks == falls:
                break
            assert time.monotonic() < deadline, "never back on the store"
            time.sleep(0.05)
        assert fl.final_connections(admin, prefix, pool) == 0
    finally:
        lb.close()
        client.close()
        admin.close()


def test_last_lease_given_back_while_its_slot_migrates(movable: EmbeddedCluster) -> None:
    """While the slot is MIGRATING the server refuses a script's touch of a missing key
    ("non local key"). The last lease's release must not trip over the lease set it
    leaves (kept by "~keep", never emptied): the release is exact and nothing reaches
    the caller."""
    prefix = f"rs{uuid.uuid4().hex[:8]}"
    source = movable.primaries()[0]
    dst = next(n for n in movable.primaries() if n is not source)
    pool = fl.pick(prefix, "pool", "last", lambda s: movable.primary_of(s) is source)
    slot = fl.slot_of(prefix, "pool", pool)
    admin = movable.client()
    fl.register(admin, prefix, pool, ["b0"])
    lb = LoadBalancer(admin, pool, prefix=prefix, breaker=None, subscribe=False)
    try:
        lb.execute(lambda b: b.id)            # every key of the pool exists now
        with lb.connection() as backend:
            assert backend.id == "b0"
            assert lb.get_statistics().connections == 1
            movable.begin_migration(slot, dst)
        assert lb.store_stats.fallbacks == 0
        assert lb.get_statistics().connections == 0
    finally:
        movable.end_migration(slot, dst)
        lb.close()
        admin.close()
