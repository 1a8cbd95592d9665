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
