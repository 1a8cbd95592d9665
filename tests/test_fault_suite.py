"""The fault suite: a fleet of real processes drives every primitive while the server
freezes, dies and comes back empty, is flushed, loses its scripts, or a worker is
SIGKILLed holding leases.

What every scenario asserts (issue #10): no exception reaches a caller, every
primitive honours its failure policy while the store is away, the registry and the
connection counts are exact again afterwards, and decisions come from the store
again well under a second after the server answers. The measured figures are
printed (run with ``-s``) and quoted in the README's *Failure modes* section.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from distlb import LoadBalancer
from distlb.embedded import EmbeddedServer
from tests import fault_workers as fw

pytestmark = [pytest.mark.faults, pytest.mark.multiprocess]
ctx = mp.get_context("spawn")

#: "Recovery well under 1 s after the server answers" (issue #10), with room for a
#: loaded 2-core machine: the figures printed are typically far lower.
RECOVERY_BOUND_S = 0.9


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as s:
        yield s


def register(url: str, prefix: str, ids: list[str]) -> None:
    admin = redis.Redis.from_url(url)
    lb = LoadBalancer(admin, "pool", prefix=prefix, subscribe=False)
    for i, bid in enumerate(ids):
        lb.add_backend(fw.Backend(bid, f"127.0.0.1:{9100 + i}"))
    lb.close()
    admin.close()


def run_fleet(url: str, prefix: str, duration_s: float, fault: Callable[[], Any],
              *, holders: int = 0, kill_holder_after_s: float | None = None,
              ) -> tuple[list[dict[str, Any]], Any]:
    """Start the fleet, run ``fault()`` 1.5 s into the run, gather every report."""
    n = fw.PROCESSES + holders
    barrier = ctx.Barrier(n + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=fw.drive, args=(url, prefix, duration_s, barrier, out,
                                                0.0 if i < fw.PROCESSES else 0.3))
             for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    time.sleep(1.5)
    if kill_holder_after_s is not None:
        time.sleep(kill_holder_after_s)
        for p in procs[fw.PROCESSES:]:
            os.kill(p.pid, signal.SIGKILL)       # dies holding leases
    marker = fault()
    reports = [out.get(timeout=duration_s + 120) for _ in range(fw.PROCESSES)]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs[:fw.PROCESSES]] == [0] * fw.PROCESSES
    return reports, marker


def assert_no_errors(reports: list[dict[str, Any]]) -> None:
    errors = {name: t["errors"] for r in reports for name, t in r["tracks"].items()
              if t["n_errors"]}
    assert errors == {}


def recovery_s(reports: list[dict[str, Any]], answered_at: float) -> dict[str, float]:
    """Per primitive, the slowest process's time from "the server answers" to its
    first decision from the store that was not followed by a fallback."""
    out: dict[str, float] = {}
    for r in reports:
        for name, t in r["tracks"].items():
            changes = t["changes"]
            assert changes[-1][1] != "policy", f"{name} still on its failure policy at the end"
            left = [at for at, src in changes if src == "policy"]
            if not left:
                continue
            back = min(at for at, src in changes if src != "policy" and at > max(left))
            # <= 0: back on the store before the test saw the server answer
            out[name] = max(out.get(name, 0.0), back - answered_at, 0.0)
    return out


def final_view(url: str, prefix: str) -> tuple[list[str], int]:
    admin = redis.Redis.from_url(url)
    lb = LoadBalancer(admin, "pool", prefix=prefix, subscribe=False)
    try:
        stats = lb.get_statistics()
        return sorted(b.id for b in stats.per_backend), stats.connections
    finally:
        lb.close()
        admin.close()


def test_server_frozen_5s_under_load(server: EmbeddedServer) -> None:
    prefix = f"fs{uuid.uuid4().hex[:8]}"
    register(server.url, prefix, ["b0", "b1", "b2"])
    assert server.process is not None
    pid = server.process.pid

    def freeze() -> float:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(5.0)
        os.kill(pid, signal.SIGCONT)
        return time.time()

    reports, answered_at = run_fleet(server.url, prefix, 9.5, freeze)
    assert_no_errors(reports)
    for r in reports:
        tracks = r["tracks"]
        for name, t in tracks.items():
            assert t["counts"]["policy"] > 0, f"{name} never applied its failure policy"
            assert t["counts"]["store"] > 0
        # fail_closed: nothing admitted without the store; fail_open: everything admitted.
        assert tracks["shaper"]["admitted"]["policy"] == 0
        assert tracks["shaper"]["denied"]["policy"] > 0
        assert tracks["budget"]["denied"]["policy"] == 0
        # the pool kept serving on its last view while the store was frozen
        assert r["no_backend"] == 0
    rec = recovery_s(reports, answered_at)
    print(f"\nfreeze 5 s: recovery after the server answered (s, slowest process): {rec}")
    assert set(rec) == set(fw.POLICIES)
    assert max(rec.values()) < RECOVERY_BOUND_S, rec
    ids, conns = final_view(server.url, prefix)
    assert (ids, conns) == (["b0", "b1", "b2"], 0)


@pytest.mark.parametrize("how", ["restart_empty", "flushall"])
def test_store_loses_everything(server: EmbeddedServer, how: str) -> None:
    """The registry comes back under new ids after the same number of changes: every
    process must see the new registry (versions never repeat), and the counts are exact."""
    prefix = f"fs{uuid.uuid4().hex[:8]}"
    register(server.url, prefix, ["b0", "b1", "b2"])

    def lose() -> float:
        if how == "restart_empty":
            assert server.process is not None
            server.process.kill()
            server.process.wait(10)
            server.start()             # same port, no persistence: empty
        else:
            server.client().flushall()
        answered = time.time()
        register(server.url, prefix, ["c0", "c1", "c2"])   # the same number of changes
        return answered

    reports, answered_at = run_fleet(server.url, prefix, 6.0, lose)
    assert_no_errors(reports)
    for r in reports:
        assert r["pool_view"] == ["c0", "c1", "c2"]
        assert r["last_served"] > r["last_no_backend"]     # served again after the loss
    rec = recovery_s(reports, answered_at)
    print(f"\n{how}: recovery after the server answered (s, slowest process): {rec}")
    if rec:
        assert max(rec.values()) < RECOVERY_BOUND_S, rec
    ids, conns = final_view(server.url, prefix)
    assert (ids, conns) == (["c0", "c1", "c2"], 0)


def test_script_flush_costs_nothing(server: EmbeddedServer) -> None:
    prefix = f"fs{uuid.uuid4().hex[:8]}"
    register(server.url, prefix, ["b0", "b1", "b2"])

    def flush() -> None:
        admin = server.client()
        for _ in range(5):
            admin.script_flush()
            time.sleep(0.2)
        admin.close()

    reports, _ = run_fleet(server.url, prefix, 4.0, flush)
    assert_no_errors(reports)
    for r in reports:
        for name, t in r["tracks"].items():
            assert t["counts"]["policy"] == 0, f"{name} fell back on a script flush"
    assert final_view(server.url, prefix) == (["b0", "b1", "b2"], 0)


def test_worker_sigkilled_holding_leases(server: EmbeddedServer) -> None:
    prefix = f"fs{uuid.uuid4().hex[:8]}"
    register(server.url, prefix, ["b0", "b1", "b2"])
    reports, _ = run_fleet(server.url, prefix, 4.0, lambda: None, holders=2,
                           kill_holder_after_s=0.5)
    assert_no_errors(reports)
    # The killed workers' leases (TTL 1 s) are given back: counts exact again.
    deadline = time.monotonic() + 30
    while True:
        ids, conns = final_view(server.url, prefix)
        if conns == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (ids, conns) == (["b0", "b1", "b2"], 0)
