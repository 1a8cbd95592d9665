"""Retry policies (pure, fake clock) and retry budgets (real server)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from distlb import (
    ConfigError,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
    RetryState,
    StoreOptions,
)
from distlb.retry import DecorrelatedJitter, Exponential, ExponentialJitter, Fixed, set_testing

bases = st.floats(min_value=0.001, max_value=5)
caps = st.floats(min_value=5, max_value=120)
attempts = st.integers(min_value=1, max_value=30)
seeds = st.integers(min_value=0, max_value=2**32)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def failing(times: int, exc: type[BaseException] = ConnectionError, ft: FakeTime | None = None,
            took_s: float = 0.0) -> Any:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if ft is not None:
            ft.now += took_s
        if calls["n"] <= times:
            raise exc(f"failure {calls['n']}")
        return "ok"

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


# -- delay sequences against their definitions --------------------------------------------------

@given(st.floats(min_value=0, max_value=60), attempts)
def test_fixed(delay: float, n: int) -> None:
    assert RetryPolicy(backoff=Fixed(delay), max_attempts=n).delays() == [delay] * (n - 1)


@given(bases, st.floats(min_value=1, max_value=10), caps, attempts)
def test_exponential(base: float, mult: float, cap: float, n: int) -> None:
    delays = RetryPolicy(backoff=Exponential(base, mult, cap), max_attempts=n).delays()
    assert delays == [min(cap, base * mult ** i) for i in range(n - 1)]
    assert delays == sorted(delays)


@given(bases, caps, attempts, seeds, st.sampled_from(["full", "equal"]))
def test_exponential_jitter_ranges(base: float, cap: float, n: int, seed: int,
                                   jitter: str) -> None:
    policy = RetryPolicy(backoff=ExponentialJitter(base, cap, jitter),  # type: ignore[arg-type]
                         max_attempts=n, rng=random.Random(seed))
    for i, d in enumerate(policy.delays()):
        ceiling = min(cap, base * 2 ** i)
        low = 0 if jitter == "full" else ceiling / 2
        assert low <= d <= ceiling


@given(bases, caps, attempts, seeds)
def test_decorrelated_jitter_range(base: float, cap: float, n: int, seed: int) -> None:
    delays = RetryPolicy(backoff=DecorrelatedJitter(base, cap), max_attempts=n,
                         rng=random.Random(seed)).delays()
    previous = base
    for d in delays:
        assert base <= d <= min(cap, previous * 3) + 1e-12
        previous = d


@given(seeds)
def test_seeded_random_is_deterministic(seed: int) -> None:
    make = lambda: RetryPolicy.decorrelated_jitter(0.1, max_attempts=8).with_random(  # noqa: E731
        random.Random(seed))
    assert make().delays() == make().delays()


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert Exponential(0.1, 10, 30).ceiling(10_000) == 30


# -- execute -----------------------------------------------------------------------------------

def test_retries_until_success_with_the_planned_waits() -> None:
    ft = FakeTime()
    policy = RetryPolicy.exponential(0.1, max_attempts=5).with_clock(ft.clock) \
        .with_sleep(ft.sleep)
    fn = failing(3)
    assert policy.execute(fn) == "ok"
    assert fn.calls["n"] == 4
    assert ft.slept == pytest.approx([0.1, 0.2, 0.4])


def test_gives_up_with_the_last_exception() -> None:
    ft = FakeTime()
    policy = RetryPolicy.fixed(1.0, max_attempts=3).with_sleep(ft.sleep)
    with pytest.raises(ConnectionError, match="failure 3"):
        policy.execute(failing(10))
    assert ft.slept == [1.0, 1.0]


def test_only_matching_exceptions_are_retried() -> None:
    ft = FakeTime()
    policy = RetryPolicy.fixed(1.0).with_sleep(ft.sleep).with_retry_on((TimeoutError,))
    fn = failing(5, exc=KeyError)
    with pytest.raises(KeyError):
        policy.execute(fn)
    assert fn.calls["n"] == 1 and ft.slept == []
    by_predicate = policy.with_retry_on(lambda e: "failure 1" in str(e))
    fn = failing(5)
    with pytest.raises(ConnectionError, match="failure 2"):
        by_predicate.execute(fn)
    assert fn.calls["n"] == 2


def test_open_breaker_is_not_retried_unless_named() -> None:
    from distlb import CircuitOpen
    ft = FakeTime()
    fn = failing(5, exc=lambda msg: CircuitOpen("node1", "open", 3.0))  # type: ignore[arg-type]
    with pytest.raises(CircuitOpen):
        RetryPolicy.fixed(1.0).with_sleep(ft.sleep).execute(fn)
    assert fn.calls["n"] == 1
    fn = failing(1, exc=lambda msg: CircuitOpen("node1", "open", 3.0))  # type: ignore[arg-type]
    policy = RetryPolicy.fixed(1.0).with_sleep(ft.sleep).with_retry_on((CircuitOpen,))
    assert policy.execute(fn) == "ok"


def test_retry_on_result_and_hooks() -> None:
    ft = FakeTime()
    seen: list[RetryState] = []
    results = iter([None, None, "done"])
    policy = RetryPolicy.fixed(0.5, max_attempts=5).with_sleep(ft.sleep) \
        .with_retry_on_result(lambda v: v is None).with_before_sleep(seen.append)
    assert policy.execute(lambda: next(results)) == "done"
    assert [(s.attempt, s.delay_s, s.error, s.value) for s in seen] == [
        (1, 0.5, None, None), (2, 0.5, None, None)]
    exhausted = RetryPolicy.fixed(0.5, max_attempts=2).with_sleep(ft.sleep) \
        .with_retry_on_result(lambda v: v is None)
    assert exhausted.execute(lambda: None) is None          # the last result comes back


def test_max_total_time_never_starts_an_attempt_that_cannot_finish() -> None:
    ft = FakeTime()
    policy = RetryPolicy.fixed(1.0, max_attempts=10).with_max_total_time(5.0) \
        .with_clock(ft.clock).with_sleep(ft.sleep)
    fn = failing(100, ft=ft, took_s=1.0)
    with pytest.raises(ConnectionError):
        policy.execute(fn)
    # attempts at t=0,2 end at 1,3; a third would run 4..5 -- allowed (ends at 5);
    # a fourth would start at 6: past the deadline, so it is not made.
    assert fn.calls["n"] == 3
    assert ft.now <= 5.0


def test_testing_switch_turns_sleeps_off() -> None:
    ft = FakeTime()
    set_testing(True)
    try:
        policy = RetryPolicy.fixed(30.0, max_attempts=4).with_sleep(ft.sleep)
        assert policy.execute(failing(3)) == "ok"
    finally:
        set_testing(False)
    assert ft.slept == []


def test_decorator() -> None:
    ft = FakeTime()
    fn = failing(1)

    @RetryPolicy.fixed(0.1).with_sleep(ft.sleep)
    def wrapped() -> str:
        return str(fn())

    assert wrapped() == "ok" and ft.slept == [0.1]


@pytest.mark.parametrize("build, field", [
    (lambda: RetryPolicy(max_attempts=0), "max_attempts"),
    (lambda: RetryPolicy.fixed(-1), "delay_s"),
    (lambda: RetryPolicy.exponential(0.1, max_delay_s=0.01), "max_delay_s"),
    (lambda: RetryPolicy.exponential_with_jitter(jitter="half"), "jitter"),  # type: ignore[arg-type]
    (lambda: RetryPolicy().with_max_total_time(float("inf")), "max_total_s"),
    (lambda: RetryPolicy().with_retry_on("ConnectionError"), "retry_on"),  # type: ignore[arg-type]
    (lambda: RetryPolicy(backoff=3), "backoff"),  # type: ignore[arg-type]
])
def test_bad_policy(build: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build()


# -- budgets -----------------------------------------------------------------------------------

@pytest.mark.lua
def test_budget_allows_ratio_of_requests_plus_minimum(client: redis.Redis, prefix: str) -> None:
    budget = RetryBudget(client, "api", ratio=0.2, min_retries_per_s=0.5, window_s=10,
                         prefix=prefix)
    for _ in range(100):
        budget.deposit()
    allowed = sum(budget.try_withdraw().allowed for _ in range(40))
    assert allowed == 25                              # 0.2 x 100 + 0.5/s x 10 s
    d = budget.peek()
    assert (d.deposits, d.withdrawals, d.allowed) == (100, 25, False)
    assert 0 <= d.balance < 1


@pytest.mark.lua
def test_deposits_are_batched(r: redis.Redis, prefix: str) -> None:
    budget = RetryBudget(r, "api", deposit_batch=50, deposit_flush_s=60, prefix=prefix)
    before = budget.store_stats.calls
    for _ in range(200):
        budget.deposit()
    assert budget.store_stats.calls - before == 4     # 200 requests, 4 round trips
    assert budget.peek().deposits == 200


@pytest.mark.lua
def test_policy_with_budget_raises_budget_exhausted(r: redis.Redis, prefix: str) -> None:
    budget = RetryBudget(r, "api", ratio=0.1, min_retries_per_s=0.1, window_s=10, prefix=prefix)
    policy = RetryPolicy.fixed(0, max_attempts=3).with_budget(budget)
    outcomes = {"gave_up": 0, "exhausted": 0}
    for _ in range(30):
        try:
            policy.execute(failing(10))
        except RetryBudgetExhausted as exc:
            assert isinstance(exc.__cause__, ConnectionError)
            outcomes["exhausted"] += 1
        except ConnectionError:
            outcomes["gave_up"] += 1
    d = budget.peek()
    assert d.deposits == 30 and d.withdrawals == 4    # 0.1 x 30 + 0.1/s x 10 s
    assert outcomes["exhausted"] >= 26


@pytest.mark.lua
def test_one_store_options_times_the_budget_and_the_policy(r: redis.Redis, prefix: str) -> None:
    """The application's one StoreOptions goes to the budget (shared) and the policy (local,
    which reads its clock and sleep): the waits run on its fake sleep, the budget under its
    prefix."""
    ft = FakeTime()
    opts = StoreOptions(prefix=prefix, clock=ft.clock, sleep=ft.sleep)
    budget = RetryBudget(r, "api", ratio=0, min_retries_per_s=1, window_s=10, options=opts)
    policy = RetryPolicy(backoff=Fixed(0.5), max_attempts=3, budget=budget, options=opts)
    assert policy.options is opts and budget.options is opts
    with pytest.raises(ConnectionError):
        policy.execute(failing(10))
    assert ft.slept == [0.5, 0.5]
    assert budget.key.startswith(f"{prefix}:") and budget.peek().withdrawals == 2


@pytest.mark.lua
@pytest.mark.parametrize("policy, allowed", [("fail_open", True), ("fail_closed", False),
                                             ("local", True)])
def test_budget_outage_policy(policy: str, allowed: bool, prefix: str) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    down = redis.Redis(port=1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))
    budget = RetryBudget(down, "api", on_store_error=policy, min_retries_per_s=1, prefix=prefix)
    d = budget.try_withdraw()
    assert (d.allowed, d.source) == (allowed, policy)


def test_bad_budget(r: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="ratio"):
        RetryBudget(r, "x", ratio=-0.1)
    with pytest.raises(ConfigError, match="window_s"):
        RetryBudget(r, "x", window_s=0)
