"""Priority through the pool and the traffic shaper across real processes, and metadata
changes seen by another process (issue #13 item 3 and ``update_backend_metadata``)."""

from __future__ import annotations

import multiprocessing as mp
import uuid
from typing import Any

import pytest

from tests import admission_workers as aw
from tests.test_multiprocess import run_workers, span_s
from tests.workers import make_client

pytestmark = pytest.mark.multiprocess
spawn = mp.get_context("spawn")


@pytest.mark.parametrize("worker, prio_hash", [(aw.mixed_priorities, "{pool:prio}:prio"),
                                               (aw.shaper_mixed_priorities, "{ts:prio}:prio")],
                         ids=["pool", "shaper"])
def test_priorities_share_an_overloaded_limit_in_order(target: dict[str, Any], worker: Any,
                                                       prio_hash: str) -> None:
    # 4 processes, each mixing levels 0, 5 and 9 evenly, ask for 2x the pool's limit (or
    # the traffic shaper's global limit: the same rule, the same Lua).
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    per_s = 2 * aw.RATE / 4
    results = run_workers(worker, [(target, prefix, per_s, seed) for seed in range(4)])
    admitted, denied, cached = ({p: sum(r[k][p] for r in results) for p in aw.LEVELS}
                                for k in ("admitted", "denied", "cached"))
    total = sum(admitted.values())
    asked = total + sum(denied.values())
    shares = {p: admitted[p] / total for p in aw.LEVELS}
    limit = aw.RATE * span_s(results) + aw.BURST
    print(f"asked {asked}, admitted {total} (limit {limit:.0f}); shares "
          + ", ".join(f"{p}: {shares[p]:.2f}" for p in aw.LEVELS)
          + "; admitted/asked per level "
          + ", ".join(f"{p}: {admitted[p] / (admitted[p] + denied[p]):.2f}" for p in aw.LEVELS)
          + f"; denials from the cache {sum(cached.values())}")
    assert asked > 1.5 * limit                   # really contended, on a busy machine too
    assert total <= limit * 1.01                 # the limit holds for all levels together
    assert total >= 0.9 * limit                  # and priorities waste none of it
    assert shares[9] > shares[5] > shares[0] > 0  # higher first; the lowest not starved
    # The counters in the store agree with what the processes saw (a denial the shaper's
    # cache answered never reached the store).
    r = make_client(target)
    c = {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}:{prio_hash}").items()
         if k.decode().endswith(("admitted", "denied"))}
    for p in aw.LEVELS:
        assert c.get(f"{p}:admitted", 0) == admitted[p]
        assert c.get(f"{p}:denied", 0) == denied[p] - cached[p]


def test_a_metadata_change_moves_locality_routing_in_another_process(
        target: dict[str, Any]) -> None:
    from distlb import Backend, LoadBalancer

    prefix = f"mp{uuid.uuid4().hex[:8]}"
    lb = LoadBalancer(make_client(target), "geo", prefix=prefix, breaker=None)
    lb.add_backend(Backend("x", "10.0.0.1:80", metadata={"region": "eu", "zone": "a"}))
    lb.add_backend(Backend("y", "10.0.0.2:80", metadata={"region": "eu", "zone": "b"}))
    commands, out = spawn.Queue(), spawn.Queue()
    proc = spawn.Process(target=aw.follow_metadata, args=(target, prefix, commands, out))
    proc.start()
    try:
        commands.put("x")
        assert out.get(timeout=120) == ["x"]      # zone a is local: only x
        lb.update_backend_metadata("x", {"region": "eu", "zone": "b"})
        lb.update_backend_metadata("y", {"region": "eu", "zone": "a", "note": "moved"})
        commands.put("y")
        assert out.get(timeout=120) == ["y"]      # now y is the local one
        assert {b.id: b.metadata for b in lb.backends()}["y"] == \
            {"region": "eu", "zone": "a", "note": "moved"}
    finally:
        commands.put(None)
        proc.join(30)
    assert proc.exitcode == 0
