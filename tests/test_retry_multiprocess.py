"""A retry budget shared by real processes holds the fleet to its ratio."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from distlb import RetryBudget
from tests import workers
from tests.test_multiprocess import run_workers

pytestmark = pytest.mark.multiprocess


def test_fleet_retries_stay_within_the_budget(target: dict[str, Any]) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    results = run_workers(workers.retry_against_dead_backend, [(target, prefix, 500)] * 4)
    requests = sum(r["requests"] for r in results)
    retries = sum(r["attempts"] for r in results) - requests
    allowance = 0.2 * requests + 5 * 30
    state = RetryBudget(workers.make_client(target), "dead", prefix=prefix, ratio=0.2,
                        min_retries_per_s=5, window_s=30).peek()
    print(f"requests {requests}, retries {retries}, allowance {allowance:.0f}, {state}")
    assert state.deposits == requests and state.withdrawals == retries
    # Without the budget this fleet would retry 2 x requests = 4000 times.
    assert 0.98 * allowance <= retries <= 1.02 * allowance
