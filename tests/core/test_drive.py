"""The decision flows, driven by a scripted store: retry loop, failure policy, execute."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from distlb import _runtime
from distlb._balancer import BreakerSettings, LoadBalancerCore
from distlb._core import pool
from distlb._core.guard import StoreGuard
from distlb._core.ops import Call, Invoke, Sleep
from distlb._core.scripts import script
from distlb._retry import Fixed, RetryBudgetCore, RetryPolicyCore
from distlb._runtime import AsyncRunner, SyncRunner
from distlb._shaping import Limit, TokenBucketCore, TrafficShaperCore
from distlb.errors import RateLimited, RetryBudgetExhausted
from distlb.strategies import Backend
from tests.clock import FakeClock
from tests.core.fake import FakeRunner, ScriptedStore, bind


def bucket_reply(allowed: bool, retry_after_s: float = 0.0) -> Any:
    # "<allowed> <conflict>" then per bucket "<i> <ok> <remaining> <retry_after_s> <rate> <burst>"
    return lambda call: (f"{int(allowed)} 0 1 {int(allowed)} 0 {retry_after_s} 10 5")


def test_acquire_waits_the_replied_retry_after_on_the_clock() -> None:
    clock = FakeClock()
    replies = iter([False, False, True])
    store = ScriptedStore(bucket=lambda c: bucket_reply(next(replies), 0.25)(c))
    tb = bind(TokenBucketCore, store, clock, "api", rate_per_s=4, burst=1)
    d = tb._run(tb._acquire(1, 10.0))
    assert d.allowed and clock.slept == [0.25, 0.25] and store.names() == ["bucket"] * 3


def test_acquire_raises_rate_limited_once_the_deadline_would_pass() -> None:
    clock = FakeClock()
    tb = bind(TokenBucketCore, ScriptedStore(bucket=bucket_reply(False, 5.0)), clock, "api",
              rate_per_s=1, burst=1)
    with pytest.raises(RateLimited):
        tb._run(tb._acquire(1, 1.0))
    assert clock.slept == []


@pytest.mark.parametrize(("policy", "allowed", "source"),
                         [("fail_open", True, "fail_open"), ("fail_closed", False, "fail_closed"),
                          ("local", True, "local")])
def test_outage_applies_the_failure_policy_then_skips_the_store(policy: str, allowed: bool,
                                                                 source: str) -> None:
    clock, store = FakeClock(), ScriptedStore(bucket=bucket_reply(True))
    store.down = True
    tb = bind(TokenBucketCore, store, clock, "api", rate_per_s=10, burst=5,
              on_store_error=policy)
    first, second = tb._run(tb._try_acquire(1)), tb._run(tb._try_acquire(1))
    assert (first.allowed, first.source) == (allowed, source) and second.source == source
    assert len(store.calls) == 1                     # the second call skipped the store
    assert tb.store_stats.outages == 1 and tb.store_stats.fallbacks == 2
    store.down = False
    clock.now += 1.0                                 # retry_store_after_s passed
    assert tb._run(tb._try_acquire(1)).source == "store"


def test_retry_loop_withdraws_from_the_budget_and_sleeps_the_backoff() -> None:
    clock = FakeClock()
    store = ScriptedStore(budget=lambda call: "1 5 0 0" if call.args[0] == "withdraw"
                          else "1 0 0 0")
    budget = bind(RetryBudgetCore, store, clock, "rb")
    policy = RetryPolicyCore(backoff=Fixed(0.5), max_attempts=3, budget=budget, clock=clock)
    attempts = iter([ValueError("1"), ValueError("2"), "ok"])

    def fn() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    runner = FakeRunner(policy._store_guard(), store, clock)
    assert runner.drive(policy._execute(fn, (), {})) == "ok"
    assert clock.slept == [0.5, 0.5]
    # The first attempt's deposit is batched locally and rides on the first withdrawal.
    assert [c.args[:2] for _, c, _ in store.calls] == [("withdraw", 1), ("withdraw", 0)]


def test_retry_loop_refused_by_the_budget_raises_from_the_last_error() -> None:
    clock = FakeClock()
    store = ScriptedStore(budget=lambda call: "0 0 0 0")
    budget = bind(RetryBudgetCore, store, clock, "rb")
    policy = RetryPolicyCore(backoff=Fixed(0.5), budget=budget, clock=clock)

    def fn() -> None:
        raise ValueError("down")

    with pytest.raises(RetryBudgetExhausted) as info:
        FakeRunner(policy._store_guard(), store, clock).drive(policy._execute(fn, (), {}))
    assert isinstance(info.value.__cause__, ValueError) and clock.slept == []


# -- execute: admission, lease, call, release, breaker, retry ---------------------------------

def pool_store(conns: dict[str, int], **extra: Any) -> ScriptedStore:
    records = []
    for bid in conns:
        records += [bid.encode(), pool.encode_record(f"10.0.0.{len(records)}:80", 1, True,
                                                     {}).encode(), b"1"]
    flat_conns = [x for bid, n in conns.items() for x in (bid.encode(), str(n).encode())]

    def answer(call: Any) -> Any:
        op = call.args[0]
        full = op == "snapshot"
        return [b"ok", b"1.1", b"1000000", records if full else [], flat_conns, [],
                int(full), int(full)]

    return ScriptedStore(pool=answer, **extra)


def test_execute_runs_the_shapers_admission_on_the_shapers_guard() -> None:
    clock = FakeClock()
    store = pool_store({"a": 0}, bucket=bucket_reply(True))
    shaper = bind(TrafficShaperCore, store, clock, "edge", global_limit=Limit(10, 5))
    lb = bind(LoadBalancerCore, store, clock, "pool", traffic_shaper=shaper, breaker=None,
              subscribe=False)
    assert lb._run(lb._execute(lambda b: b.id, (), {}, None)) == "a"
    by_name = {name: guard for name, _, guard in store.calls}
    assert by_name["bucket"] is shaper._guard and by_name["pool"] is lb._guard
    assert [c.args[0] for name, c, _ in store.calls if name == "pool"] == \
        ["snapshot", "acquire", "release"]


def test_execute_refused_by_the_shaper_never_leases() -> None:
    clock = FakeClock()
    store = pool_store({"a": 0}, bucket=bucket_reply(False, 1.0))
    shaper = bind(TrafficShaperCore, store, clock, "edge", global_limit=Limit(10, 5))
    lb = bind(LoadBalancerCore, store, clock, "pool", traffic_shaper=shaper, breaker=None,
              subscribe=False)
    with pytest.raises(RateLimited):
        lb._run(lb._execute(lambda b: b.id, (), {}, None))
    assert store.names() == ["bucket"]


def test_execute_retries_on_another_backend_and_records_both_outcomes() -> None:
    clock = FakeClock()
    store = pool_store({"a": 0, "b": 0},
                       breaker=lambda call: "1 closed - 0 1 - 0 0 0 0 0 - 0 -")
    lb = bind(LoadBalancerCore, store, clock, "pool", subscribe=False,
              breaker=BreakerSettings(failure_threshold=3),
              retry_policy=RetryPolicyCore(backoff=Fixed(0), max_attempts=2, clock=clock))
    used: list[str] = []

    def fn(backend: Backend) -> str:
        used.append(backend.id)
        if len(used) == 1:
            raise ConnectionError("first backend fails")
        return backend.id

    assert lb._run(lb._execute(fn, (), {}, None)) == used[1] and len(set(used)) == 2
    pool_ops = [c.args[0] for name, c, _ in store.calls if name == "pool"]
    assert pool_ops.count("release") == 2
    failures = [c for name, c, _ in store.calls if name == "breaker" and c.args[0] == "failure"]
    assert len(failures) == 1 and failures[0].keys[0].endswith(f"%2F{used[0]}}}")
    cb = lb._breaker_of(used[0])
    assert cb is not None and failures[0].owner is cb._guard      # the breaker's own guard


# -- issue #11: one drive loop for both runners --------------------------------------------------

def _steps_op(log: list[Any]) -> Any:
    """An operation using every step kind, an error thrown back into it, and cleanup."""
    first = yield call_named("ok")
    log.append(first)
    try:
        yield call_named("boom")
    except RuntimeError as exc:  # the store's error comes back into the operation
        log.append(f"caught {exc}")
    yield Sleep(0.25)

    def fails() -> None:
        raise ValueError("user")

    out = yield Invoke(fails, (), {})
    log.append((type(out.error).__name__, out.duration_s))
    out = yield Invoke(lambda x: x * 2, (21,), {})
    log.append(out.value)
    return "done"


def call_named(answer: str) -> Call[Any]:
    """A Call that the test runners below answer by its (only) key."""
    return Call(script("delete"), (answer,), (), lambda reply: reply, lambda: "fallback")


class _Answers:
    """The part both test runners share: answer a call by its key, time on the fake clock."""

    def answer(self, call: Any) -> Any:
        if call.keys[0] == "boom":
            raise RuntimeError("boom")
        return f"reply {call.keys[0]}"


def test_both_runners_drive_steps_through_the_one_loop_alike() -> None:
    clock = FakeClock()
    guard = StoreGuard("t", 1.0, clock=clock)

    class Sync(SyncRunner, _Answers):
        def call(self, call: Any) -> Any:
            return self.answer(call)

    class Async(AsyncRunner, _Answers):
        async def call(self, call: Any) -> Any:  # type: ignore[override]
            return self.answer(call)

    async def asleep(seconds: float) -> None:
        clock.sleep(seconds)

    sync_log: list[Any] = []
    assert Sync(guard, sleep=clock.sleep).drive(_steps_op(sync_log)) == "done"
    async_log: list[Any] = []
    assert asyncio.run(Async(guard, sleep=asleep).drive(_steps_op(async_log))) == "done"
    assert sync_log == async_log == ["reply ok", "caught boom", ("ValueError", 0.0), 42]
    assert clock.slept == [0.25, 0.25]


def test_the_asyncio_runner_awaits_what_the_users_function_returns() -> None:
    async def coro() -> int:
        return 7

    def op() -> Any:
        out = yield Invoke(coro, (), {})
        return out.value

    guard = StoreGuard("t", 1.0, clock=FakeClock())
    assert asyncio.run(AsyncRunner(guard).drive(op())) == 7
    value = SyncRunner(guard).drive(op())  # sync: the function's value as is
    assert asyncio.iscoroutine(value)
    assert asyncio.run(value) == 7


def test_the_drive_loop_exists_once() -> None:
    # The runners only perform a step's I/O; stepping an operation (send, throw, Outcome)
    # lives in distlb._core.ops.run_steps alone.
    source = inspect.getsource(_runtime)
    for word in (".send(reply)", ".throw(error)", "Outcome("):
        assert word not in source, word
