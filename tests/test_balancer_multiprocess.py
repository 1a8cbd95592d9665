"""The load balancer shared by real processes, against real loopback TCP backends."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from distlb import Backend, LoadBalancer
from tests import workers
from tests.backends import TcpBackend
from tests.test_multiprocess import ctx, run_workers

pytestmark = pytest.mark.multiprocess


def test_four_processes_balance_survive_a_dead_backend_and_see_new_ones(
        target: dict[str, Any]) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    servers = [TcpBackend(f"node{i}", delay_s=0.01) for i in range(3)]
    late = TcpBackend("node3", delay_s=0.01)
    admin = LoadBalancer(workers.make_client(target), "api", prefix=prefix)
    for s in servers:
        admin.add_backend(Backend(s.name, s.address))
    peaks: list[dict[str, int]] = []

    def during_run() -> None:
        time.sleep(1.0)
        peaks.append({b.id: b.active_connections for b in admin.backends()})
        served_before = {s.name: s.served for s in servers}
        peaks.append(served_before)
        servers[2].kill()                                  # dies mid-run
        time.sleep(0.8)
        admin.add_backend(Backend(late.name, late.address))  # joins mid-run

    t = threading.Thread(target=during_run)
    t.start()
    results = run_workers(workers.balance, [(target, prefix, 3.0)] * 4)
    t.join()
    try:
        failures = sum(r["failures"] for r in results)
        total = {k: sum(r["counts"].get(k, 0) for r in results) for k in
                 ("node0", "node1", "node2", "node3")}
        print(f"served {total}, failures {failures}, mid-run {peaks}")
        assert failures == 0                               # retries on other backends
        served = peaks[1]
        assert max(served.values()) - min(served.values()) <= 0.25 * max(served.values())
        assert total["node3"] > 0                          # every process picked up node3
        stats = {s.id: s for s in admin.get_statistics().per_backend}
        assert stats["node2"].breaker in {"open", "closed"}
        assert admin.breaker_for("node2").state().state == "open"
        assert stats["node2"].active_connections == 0
    finally:
        for s in (*servers[:2], late):
            s.kill()


def test_sigkilled_worker_leases_heal_within_the_ttl(target: dict[str, Any]) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    admin = LoadBalancer(workers.make_client(target), "api", prefix=prefix)
    for i in range(2):
        admin.add_backend(Backend(f"node{i}", f"127.0.0.1:{9000 + i}"))
    barrier, out = ctx.Barrier(1), ctx.Queue()
    p = ctx.Process(target=workers.hold_leases_and_die, args=(target, prefix, barrier, out))
    p.start()
    assert len(out.get(timeout=30)["held"]) == 3
    p.join(10)
    assert p.exitcode == -9
    assert sum(b.active_connections for b in admin.backends()) == 3
    t0 = time.monotonic()
    while sum(b.active_connections for b in admin.backends()) > 0:
        assert time.monotonic() - t0 < 2.0                 # TTL 1 s, plus slack
        time.sleep(0.05)


def execute_deferred_and_die(target: dict[str, Any], prefix: str, barrier: Any,
                             out: Any) -> None:
    """Run calls with release="deferred", then get killed with a release not yet sent."""
    import os
    import signal

    lb = LoadBalancer(workers.make_client(target), "api", prefix=prefix, lease_ttl_s=3.0,
                      release="deferred", release_delay_s=1.0)
    barrier.wait()
    for _ in range(3):
        lb.execute(lambda b: b.id)
    out.put({"pending": len(lb._leases.pending)})
    out.close()
    out.join_thread()         # the queue writes from a thread: flush before dying
    os.kill(os.getpid(), signal.SIGKILL)


def test_sigkilled_worker_with_deferred_releases_leaves_no_ghosts(
        target: dict[str, Any]) -> None:
    """The release a killed process never sent comes back with its lease's expiry: the
    fleet's snapshots give it back within lease_ttl_s + refresh_s."""
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    admin = LoadBalancer(workers.make_client(target), "api", prefix=prefix, breaker=None)
    for i in range(2):
        admin.add_backend(Backend(f"node{i}", f"127.0.0.1:{9000 + i}"))
    barrier, out = ctx.Barrier(1), ctx.Queue()
    p = ctx.Process(target=execute_deferred_and_die, args=(target, prefix, barrier, out))
    p.start()
    assert out.get(timeout=60)["pending"] == 1      # the last call's release: never sent
    p.join(30)
    assert p.exitcode == -9
    stats = admin.get_statistics()
    assert stats.connections == 1 and sum(s.requests for s in stats.per_backend) == 2
    t0 = time.monotonic()
    while admin.get_statistics().connections > 0:
        assert time.monotonic() - t0 < 30             # TTL 3 s (+ refresh), however slow
        time.sleep(0.05)
    admin.close()
