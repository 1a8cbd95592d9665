"""Priority through a TrafficShaper across real processes (issue #13 item 3): several
processes mixing levels at 2x the global limit; the share each level gets."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests import admission_workers as aw
from tests.test_multiprocess import run_workers, span_s
from tests.workers import make_client

pytestmark = pytest.mark.multiprocess


def test_priorities_share_an_overloaded_shaper_in_order(target: dict[str, Any]) -> None:
    # 4 processes, each mixing levels 0, 5 and 9 evenly, ask for 2x the global limit.
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    per_s = 2 * aw.RATE / 4
    results = run_workers(aw.shaper_mixed_priorities,
                          [(target, prefix, per_s, seed) for seed in range(4)])
    admitted = {p: sum(r["admitted"][p] for r in results) for p in aw.LEVELS}
    denied = {p: sum(r["denied"][p] for r in results) for p in aw.LEVELS}
    cached = {p: sum(r["cached"][p] for r in results) for p in aw.LEVELS}
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
    # The counters in the store agree with what the processes saw (a denial the cache
    # answered never reached the store).
    r = make_client(target)
    c = {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}:{{ts:prio}}:prio").items()
         if k.decode().endswith(("admitted", "denied"))}
    for p in aw.LEVELS:
        assert c.get(f"{p}:admitted", 0) == admitted[p]
        assert c.get(f"{p}:denied", 0) == denied[p] - cached[p]
