"""Breakers on the 3-master cluster (the asyncio breaker scenarios: tests/scenarios.py)."""

from __future__ import annotations

import time

import pytest

from distlb import CircuitBreaker
from distlb.embedded import EmbeddedCluster

pytestmark = pytest.mark.lua
CFG = dict(failure_threshold=2, open_timeout_s=0.2, success_threshold=1,
           half_open_max_requests=1, probe_lease_s=0.5)


@pytest.mark.cluster
def test_cluster_breakers_and_events(cluster: EmbeddedCluster, prefix: str) -> None:
    rc = cluster.client()
    breakers = [CircuitBreaker(rc, f"node{i}", prefix=prefix, **{**CFG, "open_timeout_s": 30})
                for i in range(6)]
    watchers = [CircuitBreaker(cluster.client(), f"node{i}", prefix=prefix,
                               **{**CFG, "open_timeout_s": 30}) for i in range(6)]
    for w in watchers:
        assert w.can_attempt().allowed
    for node in rc.get_primaries():
        rc.get_redis_connection(node).script_flush()
    for b in breakers[::2]:
        b.record_failure()
        b.record_failure()
    deadline = time.monotonic() + 2
    for i, w in enumerate(watchers):
        if i % 2 == 0:
            while w.can_attempt().allowed:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        assert w.state().state == ("open" if i % 2 == 0 else "closed")
    slots = {rc.keyslot(b.key) for b in breakers}
    assert len({rc.nodes_manager.get_node_from_slot(s).port for s in slots}) > 1
