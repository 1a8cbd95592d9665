"""fakeredis runs every primitive, and agrees with a real server (issue #14, item 3).

Users unit-test code that uses distlb on ``fakeredis.FakeRedis()`` (with ``lupa``), whose Lua
lacks parts of the real one. Three guards:

* every script in ``lua/`` runs on fakeredis in one of the scenarios below (a new script with
  no scenario fails ``test_every_script_runs_on_fakeredis``);
* each scenario gives the same observable answers on fakeredis as on the real server (the
  scenarios are deterministic: slow refills, counts, states, registry contents);
* no script uses a Lua library fakeredis does not provide (``cmsgpack``, ``bit``, ``struct``,
  ``redis.sha1hex`` ...), even on a path no scenario reaches.

``pytest --fakeredis`` (conftest.py) runs the primitives' own single-process tests on
fakeredis too; this file is the small, always-run part.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest
import redis
import redis.asyncio

import distlb.aio as aio
from distlb import (
    AdaptiveCircuitBreaker,
    Backend,
    BackendExists,
    CircuitBreaker,
    CircuitOpen,
    LeakyBucket,
    Limit,
    LoadBalancer,
    LoadBalancerContext,
    PriorityLimiter,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
    RoundRobinBalancer,
    TokenBucket,
    TrafficShaper,
    _scripts,
)

LUA = Path(__file__).resolve().parent.parent / "lua"
SCRIPTS = sorted(p.stem for p in LUA.glob("*.lua") if not p.stem.startswith("_"))
BY_SHA = {_scripts.script(name).sha: name for name in SCRIPTS}


class RecordingFakeRedis(fakeredis.FakeRedis):
    """A FakeRedis that notes which distlb scripts it ran (EVALSHA or the EVAL fallback)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ran: set[str] = set()

    def evalsha(self, sha: Any, numkeys: int, *keys_and_args: Any) -> Any:
        self.ran.add(BY_SHA.get(sha, sha))
        return super().evalsha(sha, numkeys, *keys_and_args)

    def eval(self, script: Any, numkeys: int, *keys_and_args: Any) -> Any:
        self.ran.add(next((n for n in SCRIPTS if _scripts.script(n).source == script), "?"))
        return super().eval(script, numkeys, *keys_and_args)


def wait_until(cond: Callable[[], bool], deadline_s: float = 10.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- scenarios: public API only, deterministic answers ---------------------------------------
# Rates are slow (a token per 1000 s) so counts do not depend on how fast the store answers.

def bucket(r: Any, prefix: str) -> list[Any]:
    tb = TokenBucket(r, "api", rate_per_s=0.001, burst=3, prefix=prefix)
    got = [tb.try_acquire().allowed for _ in range(4)]
    denied = tb.try_acquire()
    peeked = tb.peek(2)
    tb.reset()                                               # delete.lua
    return [got, denied.limit, denied.denied_by, peeked.allowed, tb.try_acquire().remaining]


def leaky(r: Any, prefix: str) -> list[Any]:
    lb = LeakyBucket(r, "out", rate_per_s=0.001, capacity=2, prefix=prefix)
    got = [lb.try_acquire().allowed for _ in range(3)]
    lb.reset()
    return [got, lb.try_acquire().allowed]


def shaper(r: Any, prefix: str) -> list[Any]:
    ts = TrafficShaper.with_global_limit(r, 1000.0, 100, client_limit=Limit(0.001, 2),
                                         prefix=prefix)
    changed = ts.set_client_rate_limit("vip", 0.001, 3)     # config.lua
    ts.set_backend_bandwidth_limit("node1", 0.001, 1000)
    vip = [ts.try_acquire("vip").allowed for _ in range(4)]
    pleb = [(d.allowed, d.limit) for d in (ts.try_acquire("pleb") for _ in range(3))]
    big = ts.try_acquire("other", bytes=600, backend="node1")
    bigger = ts.try_acquire("other2", bytes=600, backend="node1")
    removed = ts.remove_client_rate_limit("vip")
    return [changed, vip, pleb, big.allowed, bigger.allowed, bigger.denied_by, removed,
            sorted(ts.limits())]


def priority(r: Any, prefix: str) -> list[Any]:
    pq = PriorityLimiter(r, "pq", rate_per_s=0.001, burst=2, prefix=prefix)
    got = [pq.try_acquire(p) for p in (5, 1, 9)]
    return [[(d.allowed, d.status) for d in got]]


def breaker(r: Any, prefix: str) -> list[Any]:
    cb = CircuitBreaker(r, "node1", failure_threshold=2, open_timeout_s=60, prefix=prefix)
    twin = r.__class__(connection_pool=r.connection_pool)    # another client, same store
    other = CircuitBreaker(twin, "node1", failure_threshold=2, open_timeout_s=60, prefix=prefix)
    assert other.can_attempt().allowed                       # known closed: no round trip

    def fail() -> None:
        raise ConnectionError("down")

    outcomes = []
    for _ in range(3):
        try:
            cb.call(fail)
        except ConnectionError:
            outcomes.append("failed")
        except CircuitOpen as exc:
            outcomes.append(f"refused {exc.state}")
    # The trip reaches the other object by the PUBLISH in breaker.lua and its subscription.
    seen = wait_until(lambda: not other.can_attempt().allowed)
    cb.force_closed()
    forced = cb.state()
    cb.reset()
    other.close()
    twin.close()
    return [outcomes, seen, forced.state, forced.forced, cb.state().state]


def adaptive(r: Any, prefix: str) -> list[Any]:
    cb = AdaptiveCircuitBreaker(r, "api", error_rate_threshold=0.2, window_s=600, buckets=1,
                                min_calls=10, prefix=prefix)
    states = []
    for i in range(10):
        cb.record_result(i % 2 == 0)                         # 50% errors
        states.append(cb.state().state)
    st = cb.state()
    return [states, st.calls, st.error_rate]


def budget(r: Any, prefix: str) -> list[Any]:
    b = RetryBudget(r, "api", ratio=0.5, min_retries_per_s=0.001, window_s=1000,
                    deposit_batch=1, prefix=prefix)
    b.deposit(4)
    b.flush()
    withdrawals = [b.try_withdraw().allowed for _ in range(4)]
    peeked = b.peek()
    policy = RetryPolicy.fixed(0.0).with_max_attempts(5).with_budget(b).with_sleep(lambda s: None)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        raise ConnectionError("again")

    with pytest.raises(RetryBudgetExhausted):
        policy.execute(flaky)
    return [withdrawals, peeked.deposits, peeked.withdrawals, len(calls)]


def pool(r: Any, prefix: str) -> list[Any]:
    lb = LoadBalancer(r, "pool", RoundRobinBalancer(), rate_limit=Limit(0.001, 4),
                      prefix=prefix)
    try:
        for i in (1, 2, 3):
            lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80", weight=10 * i,
                                   metadata={"zone": f"z{i}"}))
        try:
            lb.add_backend(Backend("n1", "10.0.0.9:80"))
            exists = False
        except BackendExists:
            exists = True
        lb.update_backend_health("n3", False)
        lb.update_backend_weight("n2", 50)
        lb.remove_backend("n1")
        ids = sorted(lb.execute(lambda b: b.id, ctx=LoadBalancerContext(client_id="c"))
                     for _ in range(2))
        with lb.connection() as chosen:
            held = [b.active_connections for b in lb.backends() if b.id == chosen.id]
        lb.renew_leases()
        changed = lb.check_health(lambda b: b.id != "n2")    # elect.lua, then the registry
        stats = lb.get_statistics()
        return [exists, ids, held, changed,
                sorted((b.id, b.weight, b.healthy, b.metadata["zone"]) for b in lb.backends()),
                sorted((s.id, s.requests, s.active_connections, s.breaker)
                       for s in stats.per_backend), str(stats).split(", Avg")[0]]
    finally:
        lb.close()


SCENARIOS: dict[str, Callable[[Any, str], list[Any]]] = {
    f.__name__: f for f in (bucket, leaky, shaper, priority, breaker, adaptive, budget, pool)}


def fake_client() -> RecordingFakeRedis:
    return RecordingFakeRedis()


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_agrees_with_the_real_server(name: str, r: redis.Redis, prefix: str) -> None:
    fake = fake_client()
    try:
        on_fake = SCENARIOS[name](fake, prefix)
    finally:
        fake.close()
    assert SCENARIOS[name](r, prefix) == on_fake


def test_every_script_runs_on_fakeredis(prefix: str) -> None:
    fake = fake_client()
    try:
        for scenario in SCENARIOS.values():
            scenario(fake, prefix)
        assert fake.ran == set(SCRIPTS)
        # And fakeredis's keys expire like the server's: nothing lives forever.
        forever = [k for k in fake.scan_iter(f"{prefix}:*") if fake.ttl(k) == -1]
        assert forever == []
    finally:
        fake.close()


# Real servers' Lua has these; fakeredis 2.41 does not (checked with `return type(x)`).
# Both have cjson, redis.call/pcall/log/setresp/error_reply/status_reply, TIME and PUBLISH.
MISSING_ON_FAKEREDIS = ("cmsgpack", "bit", "struct", "redis.sha1hex", "redis.breakpoint",
                        "redis.debug", "redis.set_repl", "redis.replicate_commands",
                        "redis.REPL_", "redis.acl_check_cmd", "redis.REDIS_VERSION",
                        "redis.REDIS_VERSION_NUM")


@pytest.mark.parametrize("name", ["_common", *SCRIPTS])
def test_script_uses_only_what_fakeredis_has(name: str) -> None:
    code = "\n".join(line.split("--", 1)[0]
                     for line in (LUA / f"{name}.lua").read_text().splitlines())
    used = [m for m in MISSING_ON_FAKEREDIS
            if re.search(rf"(?<![\w.]){re.escape(m)}" + ("" if m.endswith("_") else r"(?!\w)"),
                         code)]
    assert used == [], f"lua/{name}.lua uses {used}: rewrite portably (issue #14)"


# -- asyncio: fakeredis.aioredis --------------------------------------------------------------

async def aio_scenario(r: Any, prefix: str) -> list[Any]:
    tb = aio.TokenBucket(r, "api", rate_per_s=0.001, burst=5, prefix=prefix)
    got = await asyncio.gather(*[tb.try_acquire() for _ in range(8)])
    cb = aio.CircuitBreaker(r, "node1", failure_threshold=1, prefix=prefix)
    await cb.record_failure()
    lb = aio.LoadBalancer(r, "pool", RoundRobinBalancer(), prefix=prefix)
    await lb.add_backend(Backend("n1", "10.0.0.1:80"))
    chosen = await lb.execute(_backend_id)
    budget = aio.RetryBudget(r, "api", ratio=0.1, min_retries_per_s=0.001, window_s=1000,
                             prefix=prefix)
    withdrawn = (await budget.try_withdraw()).allowed
    await lb.aclose()
    await cb.aclose()
    return [sum(d.allowed for d in got), (await cb.state()).state, chosen, withdrawn]


async def _backend_id(b: Backend) -> str:
    return b.id


async def test_asyncio_on_fakeredis_agrees_with_the_real_server(
        ar: redis.asyncio.Redis, prefix: str) -> None:
    fake = fakeredis.aioredis.FakeRedis()
    try:
        on_fake = await aio_scenario(fake, prefix)
    finally:
        await fake.aclose()
    assert on_fake == [5, "open", "n1", True]
    assert await aio_scenario(ar, prefix) == on_fake

