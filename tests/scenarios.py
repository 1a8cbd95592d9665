"""Integration scenarios written once, run for ``distlb`` (sync) and ``distlb.aio`` (asyncio).

Each scenario is ``async def name(s: Run) -> None`` registered with ``@scenario(...)``. It
uses the package under test only through ``s``:

* ``s.api``: the ``distlb`` or the ``distlb.aio`` module (``s.api.TokenBucket(...)``);
* ``s.client``: a ``redis.Redis`` or ``redis.asyncio.Redis`` (or cluster) client, ``s.prefix``;
* ``await s.call(x)``: awaits ``x`` if it is awaitable (asyncio), else returns it (sync): wrap
  every method call of a distlb object in it, ``await s.call(tb.try_acquire())``;
* ``s.fn(f)``: a user callable handed to distlb (``execute``, ``call``, a decorator): ``f``
  itself for sync, an ``async def`` calling ``f`` for asyncio;
* ``s.concurrently(thunks)``: run calls at the same time (threads for sync, tasks for
  asyncio) and return their results in order; ``s.spawn(thunk)``: one in the background;
* ``s.until(cond, what)``: wait for a condition (sync or awaitable) with a generous deadline;
* ``s.cm(x)``: a sync or async context manager, entered with ``async with``;
* ``s.connect(**kw)``: another client of the same flavour on the same server (another
  "process" view); closed by the harness.

The sync run drives the coroutine with ``asyncio.run`` only as a harness: every distlb
call it makes is a plain blocking call. ``tests/test_scenarios.py`` parametrizes over
``FLAVORS x SCENARIOS``; ids read ``test_scenario[asyncio-token_bucket_exact]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

import distlb
import distlb.aio
from distlb import (
    Backend,
    BackendExists,
    BreakerSettings,
    CircuitOpen,
    ConfigError,
    Limit,
    NoBackendAvailable,
    RateLimited,
    RetryBudgetExhausted,
    RoundRobinBalancer,
    StoreOptions,
    StoreUnavailable,
    UnknownBackend,
)
from distlb.balancer import ConfigConflict
from distlb.embedded import EmbeddedCluster, EmbeddedServer
from distlb.retry import Fixed

#: Generous: a loaded 2-core machine may take seconds where an idle one takes milliseconds.
DEADLINE_S = 30.0


@dataclass
class Run:
    """One scenario's run in one flavour: the package, the clients and the helpers."""

    flavor: str                      #: "sync" or "asyncio"
    api: ModuleType                  #: distlb or distlb.aio
    other_api: ModuleType            #: the other one (for "same package" checks)
    prefix: str
    request: pytest.FixtureRequest
    where: str = "standalone"        #: "standalone" or "cluster"
    client: Any = None
    _clients: list[Any] = field(default_factory=list)
    _objects: list[Any] = field(default_factory=list)

    @property
    def is_async(self) -> bool:
        return self.flavor == "asyncio"

    # -- clients ----------------------------------------------------------------------------

    def connect(self, **kw: Any) -> Any:
        """Another client of this flavour on the scenario's server (or cluster)."""
        if self.where == "cluster":
            cluster: EmbeddedCluster = self.request.getfixturevalue("cluster")
            if self.is_async:
                nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in
                         cluster.startup_nodes]
                c: Any = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **kw)
            else:
                c = cluster.client(**kw)
        else:
            url = self.request.getfixturevalue("server_url")
            c = (redis.asyncio.Redis if self.is_async else redis.Redis).from_url(url, **kw)
        self._clients.append(c)
        return c

    def connect_to(self, server: EmbeddedServer, **kw: Any) -> Any:
        """A client of this flavour on a private server, failing fast while it is down."""
        fast: dict[str, Any] = dict(socket_timeout=0.2, socket_connect_timeout=0.2)
        if self.is_async:
            c: Any = redis.asyncio.Redis(host="127.0.0.1", port=server.port,
                                         retry=AsyncRetry(NoBackoff(), 0), **fast, **kw)
        else:
            c = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0),
                            **fast, **kw)
        self._clients.append(c)
        return c

    def own(self, obj: Any) -> Any:
        """Close ``obj`` (a distlb object) when the scenario ends; check it is of the
        flavour's package (``distlb.aio.*`` for asyncio)."""
        assert type(obj).__module__.startswith("distlb.aio.") == self.is_async, type(obj)
        self._objects.append(obj)
        return obj

    async def close(self) -> None:
        for obj in reversed(self._objects):
            with contextlib.suppress(Exception):
                await obj.aclose()
        for c in self._clients:
            if self.is_async:
                await c.aclose()
            else:
                c.close()

    # -- calls ------------------------------------------------------------------------------

    async def call(self, x: Any) -> Any:
        """The result of a distlb (or client) call: awaited for asyncio, as is for sync.
        Strict both ways: a sync call that returns an awaitable, or an asyncio call that
        does not, is a bug of the flavour and fails the scenario."""
        if self.is_async:
            assert inspect.isawaitable(x), f"an asyncio call returned {x!r}, not an awaitable"
            return await x
        assert not inspect.isawaitable(x), f"a sync call returned an awaitable: {x!r}"
        return x

    def fn(self, f: Callable[..., Any]) -> Callable[..., Any]:
        """A user callable in the flavour's style (an ``async def`` for asyncio)."""
        if not self.is_async:
            return f

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)          # a real suspension point, as user code has
            return f(*args, **kwargs)

        wrapped.__name__ = getattr(f, "__name__", "wrapped")
        return wrapped

    def sleeper(self, slept: list[float]) -> Callable[[float], Any]:
        """A fake sleep of the flavour's kind that records what it was asked to sleep."""
        if self.is_async:
            async def asleep(s: float) -> None:
                slept.append(s)
            return asleep

        def sleep(s: float) -> None:
            slept.append(s)
        return sleep

    def spawn(self, thunk: Callable[[], Any]) -> asyncio.Future[Any]:
        """Start ``thunk()`` in the background: a task (asyncio) or a thread (sync)."""
        if self.is_async:
            started: asyncio.Future[Any] = asyncio.ensure_future(thunk())
            return started
        return asyncio.ensure_future(asyncio.to_thread(thunk))

    async def concurrently(self, thunks: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run every ``thunk()`` at the same time; their results in order."""
        return list(await asyncio.gather(*[self.spawn(t) for t in thunks]))

    async def until(self, cond: Callable[[], Any], what: str,
                    timeout_s: float = DEADLINE_S) -> Any:
        """Poll ``cond()`` (sync or awaitable) until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = cond()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    @contextlib.asynccontextmanager
    async def cm(self, manager: Any) -> AsyncIterator[Any]:
        """Enter a sync or an async context manager with ``async with``."""
        assert hasattr(manager, "__aenter__") == self.is_async, manager
        if self.is_async:
            async with manager as value:
                yield value
        else:
            with manager as value:
                yield value


Scenario = Callable[[Run], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Scenario
    where: str = "standalone"
    needs: tuple[str, ...] = ()       #: fixtures it requests beyond server_url


SCENARIOS: list[Entry] = []


def scenario(*, cluster: bool = False, needs: tuple[str, ...] = ()
             ) -> Callable[[Scenario], Scenario]:
    """Register a scenario; ``cluster=True`` also runs it on the 3-master cluster
    (as ``<name>_cluster``, ``s.client`` a cluster client)."""
    def register(fn: Scenario) -> Scenario:
        SCENARIOS.append(Entry(fn.__name__, fn, needs=needs))
        if cluster:
            SCENARIOS.append(Entry(f"{fn.__name__}_cluster", fn, "cluster", needs))
        return fn
    return register


async def run(flavor: str, entry: Entry, prefix: str, request: pytest.FixtureRequest) -> None:
    api, other = (distlb.aio, distlb) if flavor == "asyncio" else (distlb, distlb.aio)
    s = Run(flavor, api, other, prefix, request, entry.where)
    try:
        s.client = s.connect()
        await entry.fn(s)
    finally:
        await s.close()


# == the table =====================================================================================

def failing(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc
    return fail


@scenario(cluster=True)
async def token_bucket_exact(s: Run) -> None:
    """N concurrent calls get exactly ``burst`` tokens; a denial's retry_after is the refill
    time of one token; a second object (another client) shares the bucket; NOSCRIPT is
    recovered; reset refills; acquire raises RateLimited after its timeout."""
    # Slow refill (one token per 1000 s): the counts are exact however slow the machine is.
    buckets = [s.own(s.api.TokenBucket(s.client, f"api{i}", rate_per_s=0.001, burst=5,
                                       prefix=s.prefix)) for i in range(3)]
    await s.call(s.client.script_flush())      # every node of a cluster: first call is NOSCRIPT
    ds = await s.concurrently([b.try_acquire for b in buckets for _ in range(8)])
    assert sum(d.allowed for d in ds) == 15
    assert {d.source for d in ds if d.allowed} == {"store"}
    assert {d.source for d in ds} <= {"store", "cache"}  # a denial may come from this view
    denied = [d for d in ds if not d.allowed]
    assert all(990 < d.retry_after_s <= 1000 for d in denied), denied
    tb = buckets[0]
    other = s.own(s.api.TokenBucket(s.connect(), "api0", rate_per_s=0.001, burst=5,
                                    prefix=s.prefix))
    assert not (await s.call(other.peek())).allowed    # the same bucket, through another client
    with pytest.raises(RateLimited):
        await s.call(tb.acquire(timeout_s=0.05))
    # This object's reset clears its cached denial at once (another's would take effect
    # when the cached denial expires: README "How each limiter works").
    await s.call(tb.reset())
    d = await s.call(tb.try_acquire(2))
    assert d.allowed and d.source == "store" and 2.9 < d.remaining <= 3
    with pytest.raises(ConfigError, match="cost"):
        await s.call(tb.try_acquire(6))


@scenario()
async def leaky_bucket(s: Run) -> None:
    """A leaky bucket admits ``capacity`` requests, each in its own slot 1/rate apart; the
    next is denied with a retry_after; reset empties the queue."""
    lb = s.own(s.api.LeakyBucket(s.client, "out", rate_per_s=0.01, capacity=3,
                                 prefix=s.prefix))
    ds = [await s.call(lb.try_acquire()) for _ in range(4)]
    assert [d.allowed for d in ds] == [True, True, True, False]
    assert ds[0].delay_s == 0
    # 100 s slots, each counted from its own call (a busy machine takes time between them).
    assert 90 < ds[1].delay_s <= 100 and 180 < ds[2].delay_s <= 200
    assert 2.9 < ds[2].queued <= 3 and 0 < ds[3].retry_after_s <= 100
    assert not (await s.call(lb.peek())).allowed
    await s.call(lb.reset())
    assert (await s.call(lb.try_acquire())).delay_s == 0


@scenario()
async def shaper_global_client_override(s: Run) -> None:
    """Global + per-client limits; a live override set by another shaper object is seen at
    once; a global denial names the global limit; removing the override restores the
    default client limit."""
    shaper = s.own(s.api.TrafficShaper.with_global_limit(
        s.client, 0.001, 10, client_limit=Limit(0.001, 2), prefix=s.prefix))
    admin = s.own(s.api.TrafficShaper.with_global_limit(
        s.connect(decode_responses=True), 0.001, 10, client_limit=Limit(0.001, 2),
        prefix=s.prefix))
    pleb = [await s.call(shaper.try_acquire("pleb")) for _ in range(3)]
    assert [d.allowed for d in pleb] == [True, True, False]
    assert pleb[2].denied_by == ("client:pleb",)
    assert await s.call(admin.set_client_rate_limit("vip", 0.001, 4))
    assert not await s.call(admin.set_client_rate_limit("vip", 0.001, 4))    # unchanged
    assert await s.call(shaper.limits()) == {"c:vip": Limit(0.001, 4)}
    vip = await s.concurrently([lambda: shaper.try_acquire("vip") for _ in range(6)])
    assert sum(d.allowed for d in vip) == 4                 # the override, not the default 2
    assert await s.call(admin.remove_client_rate_limit("vip"))
    assert await s.call(shaper.limits()) == {}
    await s.call(shaper.reset_client("vip"))
    assert [(await s.call(shaper.try_acquire("vip"))).allowed for _ in range(3)] == \
        [True, True, False]                                 # the default client limit again
    # 8 of the global 10 taken: one more client takes 2, the next is denied globally.
    assert [(await s.call(shaper.try_acquire("a"))).allowed for _ in range(2)] == [True, True]
    d = await s.call(shaper.try_acquire("b"))
    assert not d.allowed and d.denied_by == ("global",)


LOWS = 8


@scenario()
async def priority_ordering(s: Run) -> None:
    """Waiters queue behind an empty bucket; once high-priority waiters queue, they are all
    admitted before the low ones still waiting; a non-blocking try does not jump the queue."""
    cfg: dict[str, Any] = dict(rate_per_s=3, burst=1, levels=10, aging_s=1000,
                               prefix=s.prefix)
    pq = s.own(s.api.PriorityLimiter(s.client, "pq", **cfg))
    queue = f"{s.prefix}:{{pq:pq}}:queue"
    raw = s.connect()
    assert (await s.call(pq.try_acquire(0))).status == "admitted"
    order: list[int] = []

    def waiter(level: int) -> Callable[[], Any]:
        limiter = s.own(s.api.PriorityLimiter(s.connect(), "pq", **cfg))

        async def then_record(x: Any) -> None:
            d = await s.call(x)
            assert d.allowed
            order.append(level)

        if s.is_async:
            return lambda: then_record(limiter.acquire(level, timeout_s=DEADLINE_S))

        def blocking() -> None:
            assert limiter.acquire(level, timeout_s=DEADLINE_S).allowed
            order.append(level)
        return blocking

    lows = [s.spawn(waiter(1)) for _ in range(LOWS)]
    await s.until(lambda: _queued_or_done(s, raw, queue, order, LOWS), "the lows queueing")
    d = await s.call(pq.try_acquire(9))
    assert not d.allowed and d.status in ("busy", "queued_ahead")      # no queue jumping
    highs = [s.spawn(waiter(8)) for _ in range(3)]
    await asyncio.gather(*lows, *highs)
    first_high = order.index(8)
    # Some lows may be admitted (at 3/s) before the highs queued, never one after them; at
    # least one low was overtaken (else the check says nothing: the highs came too late; with
    # LOWS waiters at 3/s the highs have about LOWS / 3 s to queue, ample on a loaded machine).
    assert first_high < LOWS and order[first_high:first_high + 3] == [8] * 3, order
    assert await s.call(raw.zcard(queue)) == 0


async def _queued_or_done(s: Run, raw: Any, queue: str, order: list[int], n: int) -> bool:
    return bool(await s.call(raw.zcard(queue)) + len(order) >= n)


BREAKER = dict(failure_threshold=2, open_timeout_s=30, success_threshold=1,
               half_open_max_requests=1, probe_lease_s=60)


@scenario(cluster=True)
async def breaker_lifecycle(s: Run) -> None:
    """Closed -> (2 failures) open, seen by another breaker object; open refuses calls and
    guards -> half-open after the timeout with exactly one probe -> its success closes it."""
    # Two breakers: one that stays open however slow the machine (30 s), one that turns
    # half-open soon (0.2 s) for the probe.
    cb = s.own(s.api.CircuitBreaker(s.client, "svc", prefix=s.prefix, **BREAKER))
    watcher = s.own(s.api.CircuitBreaker(s.connect(), "svc", prefix=s.prefix, **BREAKER))
    assert await s.call(cb.call(s.fn(lambda: "ok"))) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await s.call(cb.call(s.fn(failing(ConnectionError("down")))))
    state = await s.call(watcher.state())
    assert state.state == "open" and 0 < state.retry_after_s <= 30
    with pytest.raises(CircuitOpen):
        async with s.cm(cb.guard()):
            raise AssertionError("the guard let a call through an open breaker")
    with pytest.raises(CircuitOpen):
        await s.call(cb.call(s.fn(lambda: "never")))
    quick = {**BREAKER, "open_timeout_s": 0.2}
    cb = s.own(s.api.CircuitBreaker(s.client, "quick", prefix=s.prefix, **quick))
    watcher = s.own(s.api.CircuitBreaker(s.connect(), "quick", prefix=s.prefix, **quick))
    for _ in range(2):
        await s.call(cb.record_failure())
    probe = await s.until(lambda: cb.can_attempt(), "the breaker turning half-open")
    assert probe.state == "half_open" and probe.permit
    assert not (await s.call(watcher.can_attempt())).allowed        # the one probe is taken
    await s.call(cb.record_success(probe))
    assert (await s.call(watcher.state())).state == "closed"

    decorated = cb(s.fn(lambda: "through"))        # the breaker as a decorator
    assert await s.call(decorated()) == "through"
    await s.call(cb.force_open())
    assert not (await s.call(cb.can_attempt())).allowed
    assert (await s.call(watcher.state())).forced == "open"
    await s.call(cb.reset())
    assert (await s.call(watcher.state())).state == "closed"


@scenario()
async def breaker_event_reaches_other(s: Run) -> None:
    """A trip by one breaker object reaches another's view by the pub/sub event alone: once
    subscribed, the other refuses with no round trip and tells its listeners."""
    cfg = BREAKER
    a = s.own(s.api.CircuitBreaker(s.client, "svc", prefix=s.prefix, **cfg))
    b = s.own(s.api.CircuitBreaker(s.connect(), "svc", prefix=s.prefix, **cfg))
    seen: list[Any] = []
    b.add_listener(seen.append)
    assert (await s.call(b.can_attempt())).allowed
    await s.until(lambda: b._subscribed_since() is not None, "b's subscription")
    calls = b.store_stats.calls
    for _ in range(2):
        await s.call(a.record_failure())

    async def refused() -> bool:
        return not (await s.call(b.can_attempt())).allowed

    await s.until(refused, "b refusing after the event")
    assert b.store_stats.calls == calls                  # learned from the event alone
    assert [(t.from_state, t.to_state, t.origin) for t in seen] == [("closed", "open", "event")]


@scenario()
async def retry_policy_with_budget(s: Run) -> None:
    """The retry loop sleeps its backoff and succeeds; with a shared budget, retries stop
    at the budget (ratio x requests + minimum) with RetryBudgetExhausted; a budget of the
    other package is refused."""
    slept: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("again")
        return "ok"

    policy = s.api.RetryPolicy.exponential(0.01, max_attempts=4).with_sleep(s.sleeper(slept))
    assert await s.call(policy(s.fn(flaky))()) == "ok"
    assert slept == pytest.approx([0.01, 0.02])

    budget = s.own(s.api.RetryBudget(s.client, "api", ratio=0.1, min_retries_per_s=0.1,
                                     window_s=10, prefix=s.prefix))
    policy = s.api.RetryPolicy.fixed(0, max_attempts=3).with_budget(budget)
    outcomes = {"gave_up": 0, "exhausted": 0}
    for _ in range(30):
        try:
            await s.call(policy.execute(s.fn(failing(ConnectionError("down")))))
        except RetryBudgetExhausted as exc:
            assert isinstance(exc.__cause__, ConnectionError)
            outcomes["exhausted"] += 1
        except ConnectionError:
            outcomes["gave_up"] += 1
    d = await s.call(budget.peek())
    assert d.deposits == 30 and d.withdrawals == 4      # 0.1 x 30 + 0.1/s x 10 s
    assert outcomes["exhausted"] >= 26
    with pytest.raises(ConfigError, match="same package"):
        s.other_api.RetryPolicy().with_budget(budget)

    # One StoreOptions for the budget (shared) and the policy (its sleep).
    slept.clear()
    opts = StoreOptions(prefix=s.prefix, sleep=s.sleeper(slept))
    timed = s.own(s.api.RetryBudget(s.client, "timed", ratio=0.5, min_retries_per_s=0,
                                    options=opts))
    await s.call(timed.deposit(10))
    ds = await s.concurrently([timed.try_withdraw for _ in range(8)])
    assert sum(d.allowed for d in ds) == 5                  # 0.5 x 10
    await s.call(timed.reset())
    slow = s.own(s.api.RetryBudget(s.client, "slow", ratio=0, min_retries_per_s=1,
                                   window_s=10, options=opts))
    policy = s.api.RetryPolicy(backoff=Fixed(0.25), max_attempts=3, budget=slow, options=opts)
    with pytest.raises(ConnectionError):
        await s.call(policy.execute(s.fn(failing(ConnectionError("down")))))
    assert slept == [0.25, 0.25] and (await s.call(slow.peek())).withdrawals == 2


def _pool(s: Run, client: Any, **kw: Any) -> Any:
    kw.setdefault("breaker", BreakerSettings(failure_threshold=1, open_timeout_s=60))
    kw.setdefault("retry_policy", s.api.RetryPolicy.fixed(0, max_attempts=3))
    return s.own(s.api.LoadBalancer(client, "api", RoundRobinBalancer(), prefix=s.prefix, **kw))


@scenario(cluster=True)
async def load_balancer_execute(s: Run) -> None:
    """execute on a pool with one failing backend: every call succeeds on the others, the
    failing backend's breaker opens, every lease is released (connections back to 0), the
    statistics count the requests and the error; a held connection counts 1."""
    lb = _pool(s, s.client)
    for i in range(3):
        await s.call(lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80")))

    def fetch(b: Backend) -> str:
        if b.id == "n2":
            raise ConnectionError("n2 is down")
        return b.id

    results = await s.concurrently([lambda: lb.execute(s.fn(fetch)) for _ in range(12)])
    assert set(results) == {"n0", "n1"} and len(results) == 12
    assert (await s.call(lb.breaker_for("n2").state())).state == "open"
    stats = await s.call(lb.get_statistics())
    assert stats.connections == 0 and stats.backends == 3
    per = {b.id: b for b in stats.per_backend}
    assert per["n0"].requests + per["n1"].requests == 12
    assert per["n0"].errors == per["n1"].errors == 0
    assert per["n2"].errors >= 1 and per["n2"].breaker == "open"
    assert sum(b.active_connections for b in await s.call(lb.backends())) == 0
    async with s.cm(lb.connection()) as b:
        assert b.id in {"n0", "n1"}
        assert (await s.call(lb.get_statistics())).connections == 1
    assert (await s.call(lb.get_statistics())).connections == 0


@scenario()
async def load_balancer_all_fail(s: Run) -> None:
    """Every backend fails: execute tries each once and raises the last failure, caused by
    NoBackendAvailable; no lease is left behind."""
    lb = _pool(s, s.client, breaker=None, retry_policy=s.api.RetryPolicy.fixed(0,
                                                                                max_attempts=5))
    for i in (1, 2):
        await s.call(lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80")))
    calls: list[str] = []

    class Refused(Exception):
        pass

    def fail(b: Backend) -> None:
        calls.append(b.id)
        raise Refused(b.id)

    with pytest.raises(Refused) as info:
        await s.call(lb.execute(s.fn(fail)))
    assert sorted(calls) == ["n1", "n2"] and isinstance(info.value.__cause__, NoBackendAvailable)
    assert (await s.call(lb.get_statistics())).connections == 0


@scenario()
async def registry_seen_by_another_pool(s: Run) -> None:
    """add / update (health, weight, metadata) / remove on one pool object are seen by
    another on its own client; duplicate add and unknown remove raise."""
    a = _pool(s, s.client)
    b = _pool(s, s.connect(decode_responses=True))
    await s.call(a.add_backend(Backend("n1", "10.0.0.1:80")))
    await s.call(a.add_backend(Backend("n2", "10.0.0.2:80", weight=2)))
    with pytest.raises(BackendExists):
        await s.call(b.add_backend(Backend("n1", "10.0.0.9:80")))
    seen = {x.id: x for x in await s.call(b.backends())}
    assert set(seen) == {"n1", "n2"} and seen["n2"].weight == 2
    await s.call(a.update_backend_weight("n1", 5))
    await s.call(a.update_backend_metadata("n1", {"zone": "z1"}))
    await s.call(a.update_backend_health("n2", False))
    seen = {x.id: x for x in await s.call(b.backends())}
    assert (seen["n1"].weight, dict(seen["n1"].metadata)) == (5, {"zone": "z1"})
    assert not seen["n2"].healthy
    # b's selection follows (an event, else within refresh_s): only n1 is healthy.
    async def only_n1() -> bool:
        return {(await s.call(b.select_backend())).id for _ in range(4)} == {"n1"}

    await s.until(only_n1, "b selecting only the healthy backend")
    # Two pools patch the same record at once (compare-and-set): neither change is lost.
    await s.concurrently([lambda: a.update_backend_weight("n1", 7),
                          lambda: b.update_backend_metadata("n1", {"zone": "z2"})])
    n1 = {x.id: x for x in await s.call(a.backends())}["n1"]
    assert (n1.weight, dict(n1.metadata)) == (7, {"zone": "z2"})
    await s.call(a.remove_backend("n2"))
    assert [x.id for x in await s.call(b.backends())] == ["n1"]
    with pytest.raises(UnknownBackend):
        await s.call(b.remove_backend("n2"))


@scenario()
async def fleet_config(s: Run) -> None:
    """set_config on one pool object is in force there at once and read by another;
    compare-and-set refuses a stale version; unset restores the constructor arguments."""
    a = _pool(s, s.client, rate_limit=Limit(9, 9))
    b = _pool(s, s.connect(), rate_limit=Limit(9, 9))
    await s.call(a.add_backend(Backend("n1", "127.0.0.1:9")))
    assert (await s.call(b.config())).version == 0
    cfg = await s.call(a.set_config(rate_limit="4/s", breaker={"success_threshold": 2},
                                    by="scenario"))
    assert cfg.version == 1 and a.rate_limit == Limit(4, 4)
    assert a.breaker_settings is not None and a.breaker_settings.success_threshold == 2
    seen = await s.call(b.config())
    assert seen.version == 1 and b.rate_limit == Limit(4, 4)
    assert b.breaker_settings is not None and b.breaker_settings.success_threshold == 2
    with pytest.raises(ConfigConflict):
        await s.call(b.set_config(expected_version=0, rate_limit="1/s"))
    history = await s.call(b.config_history())
    assert [(e["version"], e["by"]) for e in history] == [(1, "scenario")]
    cfg = await s.call(b.set_config(expected_version=1, unset=["rate_limit"]))
    assert cfg.version == 2 and b.rate_limit == Limit(9, 9)
    assert (await s.call(a.config())).version == 2 and a.rate_limit == Limit(9, 9)
    with pytest.raises(ConfigError, match="rate_limit"):
        await s.call(a.set_config(rate_limit="fast"))


@scenario(needs=("own_server",))
async def store_unreachable(s: Run) -> None:
    """The store stops: limiters follow their failure policy (fail_open, fail_closed,
    local: burst / expected_processes), a pool keeps balancing on its last registry under
    fail_open and raises StoreUnavailable under fail_closed, administrative calls raise
    StoreUnavailable; once the store is back, decisions come from it again."""
    server: EmbeddedServer = s.request.getfixturevalue("own_server")
    c = s.connect_to(server)
    # Slow refill: the local twin's count is exact however long the calls take.
    kw: dict[str, Any] = dict(rate_per_s=0.001, burst=100, prefix=s.prefix,
                              retry_store_after_s=0.2)
    local = s.own(s.api.TokenBucket(c, "local", on_store_error="local",
                                    expected_processes=4, **kw))
    opened = s.own(s.api.TokenBucket(c, "open", on_store_error="fail_open", **kw))
    closed = s.own(s.api.TokenBucket(c, "closed", on_store_error="fail_closed", **kw))
    shaper = s.own(s.api.TrafficShaper.with_global_limit(c, 10, 10, prefix=s.prefix))
    cb = s.own(s.api.CircuitBreaker(c, "cb", prefix=s.prefix))
    pool = _pool(s, c, breaker=None)
    strict = s.own(s.api.LoadBalancer(c, "api", prefix=s.prefix, breaker=None,
                                      on_store_error="fail_closed"))
    for i in range(3):
        await s.call(pool.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80")))
    assert await s.call(pool.execute(s.fn(lambda b: b.id)))
    assert await s.call(strict.execute(s.fn(lambda b: b.id)))
    for tb in (local, opened, closed):
        assert (await s.call(tb.try_acquire())).source == "store"
    server.stop()
    during = await s.concurrently([local.try_acquire for _ in range(40)])
    assert {d.source for d in during} == {"local"}
    assert sum(d.allowed for d in during) == 25                 # burst 100 / 4 processes
    d = await s.call(opened.try_acquire())
    assert (d.allowed, d.source) == (True, "fail_open")
    d = await s.call(closed.try_acquire())
    assert (d.allowed, d.source) == (False, "fail_closed")
    ids = {await s.call(pool.execute(s.fn(lambda b: b.id))) for _ in range(6)}
    assert ids == {"n0", "n1", "n2"}                            # the last known registry
    with pytest.raises(StoreUnavailable):
        await s.call(strict.execute(s.fn(lambda b: b.id)))
    for admin in (lambda: shaper.set_global_limit(1, 1), lambda: shaper.limits(),
                  lambda: shaper.set_client_rate_limit("a", 1, 1),
                  lambda: cb.force_open(), lambda: cb.reset(), lambda: opened.reset(),
                  lambda: pool.add_backend(Backend("n9", "10.0.0.9:80"))):
        with pytest.raises(StoreUnavailable):
            await s.call(admin())
    server.start()

    async def from_store() -> bool:
        return bool((await s.call(closed.try_acquire())).source == "store")

    await s.until(from_store, "decisions from the store again")
    assert (await s.call(local.try_acquire())).source == "store"
