"""Every script's plan and parse, against canned replies: no server.

Each case checks what the plan sends (script, keys, packed arguments), that the
call names its owner (the primitive's guard), and what the parse makes of a reply
in both reply shapes a client may hand back (bytes or str).
"""

from __future__ import annotations

from typing import Any

import pytest

from distlb import _keys
from distlb._balancer import BreakerSettings, LoadBalancerCore
from distlb._breaker import CircuitBreakerCore
from distlb._core import breaker as bk
from distlb._core import bucket, leaky, pool, priority
from distlb._core.guard import StoreGuard
from distlb._core.scripts import script
from distlb._retry import RetryBudgetCore
from distlb._shaping import (
    LeakyBucketCore,
    Limit,
    PriorityLimiterCore,
    TokenBucketCore,
    TrafficShaperCore,
)
from tests.clock import FakeClock
from tests.core.fake import ScriptedStore, bind

SHAPES = [lambda s: s.encode(), lambda s: s]   # a bytes client, a decode_responses client


def nothing() -> Any:
    raise AssertionError("no fallback expected")


@pytest.mark.parametrize("shape", SHAPES)
def test_bucket_plan_and_parse(shape: Any) -> None:
    owner = StoreGuard("t", 1.0)
    conflicts: list[int] = []
    specs = [bucket.BucketSpec("p:{ts:a}", "global", 10.0, 5.0, 1.0),
             bucket.BucketSpec("p:{ts:a}:c:bob", "client:bob", 2.0, 3.0, 1.0, "c:bob")]
    call = bucket.plan("take", specs, limits_key="p:{ts:a}:limits", limits_ttl_ms=7,
                       fallback=nothing, on_conflict=lambda: conflicts.append(1), owner=owner)
    assert call.script == script("bucket") and call.owner is owner
    assert call.keys == ("p:{ts:a}", "p:{ts:a}:c:bob", "p:{ts:a}:limits")
    assert call.args == (b"take 7", b"10.0 5.0 1.0", b"2.0 3.0 1.0 c:bob")
    d = call.parse(shape("0 1 1 1 4 0 10 5 2 0 0 0.5 2 3"))
    assert not d.allowed and d.limit == "client:bob" and d.retry_after_s == 0.5
    assert [s.allowed for s in d.limits] == [True, False] and conflicts == [1]


@pytest.mark.parametrize("shape", SHAPES)
def test_leaky_plan_and_parse(shape: Any) -> None:
    call = leaky.plan("take", "p:{lk:q}", 5.0, 10.0, 1.0, fallback=nothing,
                      on_conflict=nothing)
    assert call.keys == ("p:{lk:q}",) and call.args == ("take", "5.0", "10.0", "1.0")
    d = call.parse(shape("1 0.2 3 0 0"))
    assert d.allowed and d.delay_s == 0.2


def test_priority_plan_and_parse() -> None:
    keys = ("k", "k:q", "k:t", "k:l")
    call = priority.plan("enqueue", keys, ticket="t1", level=2, rate_per_s=1.0, burst=2.0,
                         cost=1.0, max_depth=9, aging_s=0.5, lease_ms=300, fallback=nothing)
    assert call.args == ("enqueue", "t1", 2, "1.0", "2.0", "1.0", 9, "0.5", 300)
    d = call.parse([0, b"queued", b"0.25", 3, b"1.5"])
    assert not d.allowed and d.status == "queued" and d.retry_after_s == 0.25


@pytest.mark.parametrize("shape", SHAPES)
def test_breaker_plan_and_parse(shape: Any) -> None:
    seen: list[tuple[Any, ...]] = []
    config = bk.Config("count 5", "1000 1 1 1000 5000", 1.0)
    call = bk.plan("attempt", ("b", "b:probes", "b:window"), name="api", arg="tok",
                   channel="p:events", config=config, fallback=nothing,
                   parse_hook=lambda st, ch: seen.append(ch))
    assert call.args == ("attempt", "tok", "p:events", "api", "count 5", "1000 1 1 1000 5000", 0,
                         "")
    st = call.parse(shape("0 open - 5 42 - 750 0 0 10 0.5 - 0 closed>open@42 7"))
    assert (st.state, st.allowed, st.failures, st.version, st.retry_after_s, st.period) == \
        ("open", False, 5, 42, 0.75, 7)
    assert seen == [(("closed", "open", 42),)]
    # A result carries the closed period its call was admitted in ("" when unknown).
    rec = bk.plan("failure", ("b", "b:probes", "b:window"), name="api", arg="",
                  channel="", config=config, fallback=nothing, period=1712345678901234,
                  parse_hook=lambda st, ch: None)
    assert rec.args[-1] == "1712345678901234"


def test_pool_parse_reads_records_counts_and_stats() -> None:
    raw = pool.encode_record("10.0.0.1:80", 3, True, {"zone": "a"})
    reply = [b"ok", b"1.7", b"1700000000000000", [b"n1", raw.encode(), b"1699999999000000"],
             [b"n1", b"2"], [b"n1:requests", b"10", b"n1:latency_ms", b"nan"], 1, 1]
    state = pool.parse(reply)
    assert state.status == "ok" and state.version == "1.7"
    assert state.records is not None and state.records["n1"].weight == 3
    assert state.conns == {"n1": 2} and state.stats == {"n1:requests": 10.0}   # nan dropped
    hot = pool.parse([b"ok", b"1.7", b"1", [], [b"n1", b"1"], [], 0, 0])
    assert hot.records is None and hot.stats is None


def test_pool_parse_reads_the_short_hot_reply() -> None:
    """Acquire, admit, release: "<token> <server_us> <status>" and the non-zero counts."""
    state = pool.parse([b"1.7 1700000000000000 ok", [b"n1", b"2", b"n 2", b"1"]])
    assert (state.status, state.version, state.server_us) == ("ok", "1.7", 1700000000000000)
    assert state.conns == {"n1": 2, "n 2": 1} and state.records is None and state.stats is None
    limited = pool.parse([" 0 limited:client 0.25", ["n1", "many", "n2", "3"]])  # decoded
    assert (limited.status, limited.version, limited.server_us) == ("limited:client 0.25", "", 0)
    assert limited.conns == {"n2": 3}                     # a count written by hand: skipped


def test_a_recounted_backend_equals_a_replaced_one() -> None:
    """The hot path's copy of a Backend with a new count misses no field."""
    import dataclasses

    from distlb._pool.view import counted as _counted
    from distlb.strategies import Backend
    b = Backend("n1", "10.0.0.1:80", 7, False, 1, 2.5, 0.1, 3.0, 12.0, {"zone": "a"})
    c = _counted(b, 4)
    assert c == dataclasses.replace(b, active_connections=4)
    for f in dataclasses.fields(Backend):
        assert getattr(c, f.name) == getattr(dataclasses.replace(b, active_connections=4),
                                             f.name)


# -- the primitives' own plans: keys from the key builder, owner = the primitive's guard ------

def test_every_primitive_plans_its_calls_under_its_own_guard() -> None:
    clock, store = FakeClock(), ScriptedStore()
    tb = bind(TokenBucketCore, store, clock, "api", rate_per_s=10, burst=5, prefix="p")
    lk = bind(LeakyBucketCore, store, clock, "q", rate_per_s=10, capacity=5, prefix="p")
    ts = bind(TrafficShaperCore, store, clock, "s", global_limit=Limit(10, 5), prefix="p")
    pq = bind(PriorityLimiterCore, store, clock, "pq", rate_per_s=10, burst=5, prefix="p")
    cb = bind(CircuitBreakerCore, store, clock, "cb", prefix="p", subscribe=False)
    rb = bind(RetryBudgetCore, store, clock, "rb", prefix="p")
    lb = bind(LoadBalancerCore, store, clock, "pool", prefix="p", subscribe=False,
              breaker=BreakerSettings())
    calls = {
        tb: tb._try_acquire(1), lk: lk._try_acquire(1), ts: ts._call("take", "c", 1, 0, None),
        cb: cb._plan("attempt", "x", nothing), rb: rb._withdraw(),
        lb: lb._plan("snapshot", []), pq: pq._reset(),
    }
    for obj, call in calls.items():
        assert call.owner is obj._guard, obj
        assert all(k.startswith(_keys.entity("p", obj.kind, obj.name.replace("/", "%2F")))
                   for k in call.keys), (obj, call.keys)


def test_pool_breakers_reset_forgets_every_breaker_and_takes_the_new_settings() -> None:
    """The interface a fleet-wide configuration change uses (no reach into the pool)."""
    from distlb._breaker import BreakerSettings
    from distlb._pool.breakers import PoolBreakers

    made: list[tuple[str, BreakerSettings]] = []

    class Stub:
        metrics_pool = ""
        known_state = None

        def add_listener(self, listener: object) -> None:
            pass

    def new(name: str, settings: BreakerSettings) -> Any:
        made.append((name, settings))
        return Stub()

    pb = PoolBreakers("pool", BreakerSettings(), False, new)
    first = pb.of("a")
    assert pb.of("a") is first and made[0][1].subscribe is False
    pb.refused("a")
    assert pb.watching
    old = pb.reset(BreakerSettings(failure_threshold=9), subscribe=False)
    assert old == [first] and not pb.watching
    assert pb.of("a") is not first
    assert made[-1][1].failure_threshold == 9 and made[-1][1].subscribe is False
    assert pb.reset(None, subscribe=False) and pb.of("a") is None and pb.state_of("a") == "-"
