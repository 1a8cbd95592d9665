"""The pool's shared state under faults: lost registries, hostile records, stalls, bad input.

Regression tests for issue #10 items 1, 2, 3, 7, 12, 13 and 15, against real servers
(and real processes where the item is about the fleet).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from distlb import (
    Backend,
    BreakerSettings,
    ConfigError,
    Context,
    LoadBalancer,
    NoBackendAvailable,
    RoundRobinBalancer,
    StoreUnavailable,
    UnknownBackend,
)
from distlb.embedded import EmbeddedServer, free_port
from tests.clock import FakeClock
from tests.test_multiprocess import ctx

pytestmark = pytest.mark.lua


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll ``condition`` until it is truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- item 1: a registry lost and rebuilt is seen by live processes ------------------------------

def watch_registry(url: str, prefix: str, out: Any, stop: Any) -> None:
    """A live process: keeps a cached view and reports every distinct list of backends."""
    lb = LoadBalancer(redis.Redis.from_url(url), "api", prefix=prefix, refresh_s=0.05,
                      breaker=None)
    last: tuple[str, ...] | None = None
    try:
        while not stop.is_set():
            with contextlib.suppress(NoBackendAvailable):
                lb.select_backend()
            view = tuple(sorted(b.id for b in lb._snapshot))
            if view != last:
                out.put(view)
                last = view
            time.sleep(0.01)
    finally:
        lb.close()


@pytest.mark.multiprocess
@pytest.mark.parametrize("loss", ["flushall", "del"])
def test_live_process_sees_a_rebuilt_registry_and_its_last_removal(
        own_server: EmbeddedServer, loss: str) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    admin_client = own_server.client()
    admin = LoadBalancer(admin_client, "api", prefix=prefix, breaker=None)
    for i in range(3):
        admin.add_backend(Backend(f"b{i}", f"127.0.0.1:{9000 + i}"))
    out, stop = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=watch_registry, args=(own_server.url, prefix, out, stop))
    p.start()
    try:
        def saw(view: tuple[str, ...]) -> None:
            deadline = time.monotonic() + 60
            while True:
                got = out.get(timeout=max(0.1, deadline - time.monotonic()))
                if got == view:
                    return

        saw(("b0", "b1", "b2"))                 # the registry at version 3, cached
        if loss == "flushall":
            admin_client.flushall()
        else:
            admin_client.delete(*admin_client.keys(f"{prefix}:*"))
        admin = LoadBalancer(admin_client, "api", prefix=prefix, breaker=None)
        for i in range(3):                      # the same number of changes again
            admin.add_backend(Backend(f"c{i}", f"127.0.0.1:{9100 + i}"))
        saw(("c0", "c1", "c2"))
        for i in range(3):
            admin.remove_backend(f"c{i}")
        saw(())                                 # the last removal is seen too
    finally:
        stop.set()
        p.join(30)
        admin_client.close()
    assert p.exitcode == 0


def test_an_emptied_registry_is_a_state_not_no_change(r: redis.Redis, prefix: str) -> None:
    writer = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    reader = LoadBalancer(redis.Redis(connection_pool=r.connection_pool), "api", prefix=prefix,
                          breaker=None, subscribe=False, refresh_s=0)
    writer.add_backend(Backend("a", "10.0.0.1:80"))
    assert [b.id for b in reader.backends()] == ["a"]
    r.delete(*r.keys(f"{prefix}:*"))            # the store lost the pool (expiry, restart)
    assert reader.backends() == ()
    with pytest.raises(NoBackendAvailable):
        reader.select_backend()
    writer.add_backend(Backend("b", "10.0.0.2:80"))
    assert [b.id for b in reader.backends()] == ["b"]


# -- item 2: metadata validated; hostile records cannot brick the pool ---------------------------

BAD_METADATA: list[Any] = [
    {"x": math.nan}, {"x": math.inf}, {"x": -math.inf}, {"x": [1.0, math.nan]},
    {b"k": 1}, {1: 1}, {"x": 2**64}, {"x": -(2**53)}, {"x": b"bytes"}, {"x": {1, 2}},
    {"x": "\ud800"}, {"\udc00": 1}, {"x": object()}, {"x": "y" * 20_000},
    {"x": json.loads("[" * 20 + "]" * 20)}, ["not", "a", "dict"],
]


@pytest.mark.parametrize("metadata", BAD_METADATA, ids=range(len(BAD_METADATA)))
def test_bad_metadata_is_refused_before_the_store(r: redis.Redis, prefix: str,
                                                  metadata: Any) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    with pytest.raises(ConfigError, match="metadata"):
        lb.add_backend(Backend("a", "10.0.0.1:80", metadata=metadata))
    assert r.keys(f"{prefix}:*") == []
    lb.add_backend(Backend("b", "10.0.0.2:80"))        # the pool still works
    assert [b.id for b in lb.backends()] == ["b"]


def test_metadata_reads_back_as_stored(client: redis.Redis, prefix: str) -> None:
    metadata = {"zone": "eu-1", "empty": {}, "list": [1, None, "x", 2.5, True],
                "nested": {"a": {"b": [None]}}, "big": 2**53 - 1, "neg": -(2**53 - 1),
                "tiny": 5e-324, "unicode": "žluťoučký 🐎", "none": None}
    writer = LoadBalancer(client, "api", prefix=prefix, breaker=None)
    writer.add_backend(Backend("a", "10.0.0.1:80", metadata=metadata))
    writer.add_backend(Backend("t", "10.0.0.2:80", metadata={"seq": (1, 2)}))
    reader = LoadBalancer(client, "api", prefix=prefix, breaker=None)
    by_id = {b.id: b for b in reader.backends()}
    assert by_id["a"].metadata == metadata
    assert by_id["t"].metadata == {"seq": [1, 2]}      # sequences read back as lists
    writer.update_backend_weight("a", 7)               # a patch keeps the metadata
    assert {b.id: b for b in reader.backends()}["a"].metadata == metadata


HOSTILE = [b"not json", b"\x85\xa2id\xa1e\xa4meta\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
           b'{"address": "10.0.0.9:80"}', b'{"address": 5, "weight": 1, "healthy": true}',
           b'{"address": "10.0.0.9:80", "weight": 1e400, "healthy": true, "metadata": {}}',
           b'{"address":"10.0.0.9:80","weight":1,"healthy":true,"metadata":{"x":NaN}}',
           b"[" * 100_000, b"\xff\xfe", b"[]", b"null"]


def test_hand_written_records_cannot_poison_the_pool(client: redis.Redis, prefix: str) -> None:
    """Garbage written with redis-cli into every pool hash: every call still works, the
    bad records are skipped, and the garbage counters are reset rather than failing."""
    lb = LoadBalancer(client, "api", prefix=prefix, breaker=BreakerSettings())
    lb.add_backend(Backend("good", "10.0.0.1:80"))
    key = lb.key
    for i, raw in enumerate(HOSTILE):
        client.hset(f"{key}:backends", f"evil{i}", raw)
    client.hset(f"{key}:backends", "", b'{"address":"10.0.0.9:80","weight":1,"healthy":true,'
                                       b'"metadata":{}}')       # an id Backend refuses
    client.hset(f"{key}:conns", mapping={"good": "many", "evil0": "x"})
    client.hset(f"{key}:stats", mapping={"good:requests": "lots", "good:latency_ms": "nan",
                                         "good:error_rate": "inf", "good:errors": "?"})
    client.zadd(f"{key}:leases", {"no-separator": 0, "|": 0})
    client.hset(f"{key}:since", "good", "yesterday")
    client.hset(key, "version", "garbage")
    for k in client.keys(f"{prefix}:*"):
        client.pexpire(k, 60_000)
    lb.add_backend(Backend("other", "10.0.0.2:80"))     # a registry change, so views reload
    other = LoadBalancer(client, "api", prefix=prefix, breaker=None)
    for pool in (lb, other):
        assert sorted(b.id for b in pool.backends()) == ["good", "other"]
        seen = {pool.execute(lambda b: b.id) for _ in range(4)}
        assert seen == {"good", "other"}
        stats = {s.id: s for s in pool.get_statistics().per_backend}
        assert stats["good"].requests >= 1 and math.isfinite(stats["good"].latency_ms)
    lb.update_backend_health("good", False)
    assert [b.id for b in other.backends() if b.healthy] == ["other"]
    with pytest.raises(UnknownBackend, match="evil0"):
        lb.update_backend_weight("evil0", 5)
    lb.remove_backend("evil0")                          # a bad record can still be removed
    assert all(client.pttl(k) > 0 for k in client.keys(f"{prefix}:*"))


def test_concurrent_patches_all_land(r: redis.Redis, prefix: str) -> None:
    """Patches are compare-and-set on the record: two processes' views race, none is lost."""
    a = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    b = LoadBalancer(redis.Redis(connection_pool=r.connection_pool), "api", prefix=prefix,
                     breaker=None)
    a.add_backend(Backend("n", "10.0.0.1:80", metadata={"k": 1}))
    a.backends()
    b.backends()                                        # both views hold the same record
    a.update_backend_weight("n", 5)
    b.update_backend_health("n", False)                 # built from a stale view: retried
    (n,) = LoadBalancer(r, "api", prefix=prefix, breaker=None).backends()
    assert (n.weight, n.healthy, n.metadata) == (5, False, {"k": 1})


# -- item 3: every key gets its TTL in the call that writes it -----------------------------------

def test_a_short_lived_process_leaves_no_key_without_ttl(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None, refresh_s=3600,
                      subscribe=False)
    lb.add_backend(Backend("a", "10.0.0.1:80"))
    lb.backends()                                       # the last snapshot: before any lease
    lb.execute(lambda b: None)                          # acquire + release: :conns, :stats
    lb.record_result("a", 0.01, False)
    with lb.connection():
        assert r.pttl(f"{lb.key}:leases") > 0           # a lease held: the zset has its TTL
    lb.close()
    keys = r.keys(f"{prefix}:*")
    assert {k.decode().rpartition("}")[2] for k in keys} >= {"", ":backends", ":conns",
                                                             ":stats", ":since"}
    assert {k: r.pttl(k) for k in keys if r.pttl(k) < 0} == {}


# -- item 7: ghost leases of calls that timed out on the client ----------------------------------

def test_acquire_that_timed_out_but_ran_is_given_back(own_server: EmbeddedServer,
                                                      prefix: str) -> None:
    admin = own_server.client()
    c = own_server.client(socket_timeout=0.3)
    lb = LoadBalancer(c, "api", prefix=prefix, breaker=None, refresh_s=3600, subscribe=False,
                      retry_store_after_s=0.05)
    lb.add_backend(Backend("a", "10.0.0.1:80"))
    lb.backends()
    conns = f"{lb.key}:conns"
    assert own_server.process is not None
    pid = own_server.process.pid
    os.kill(pid, signal.SIGSTOP)                        # the server stalls ...
    try:
        assert lb.execute(lambda b: b.id) == "a"        # ... the acquire times out: fail open
    finally:
        os.kill(pid, signal.SIGCONT)
    # The acquire ran once the server woke: a ghost connection nobody will return.
    wait_for(lambda: admin.hget(conns, "a") == b"1", "the stalled acquire to run")
    # The next call that reaches the store gives it back (no extra round trip).
    wait_for(lambda: lb.backends() and not lb._guard._down, "the store to answer again")
    assert admin.hget(conns, "a") == b"0"
    assert admin.zrange(f"{lb.key}:leases", 0, -1) == [b"~keep"]   # no lease held
    assert lb._leases.ghosts == {}
    c.close()
    admin.close()


# -- item 12: latency statistics measure the backend, not the breaker ----------------------------

def slow_store_client(url: str, clock: FakeClock) -> redis.Redis:
    class Client(redis.Redis):
        def evalsha(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            clock.now += 1.0
            return super().evalsha(*args, **kwargs)
    return Client.from_url(url)


class Observing(RoundRobinBalancer):
    def __init__(self) -> None:
        super().__init__()
        self.samples: list[float] = []

    def observe(self, backend_id: str, duration_s: float, ok: bool) -> None:
        self.samples.append(duration_s)


@pytest.mark.parametrize("breaker", [BreakerSettings(), None], ids=["breakers", "none"])
def test_noop_call_latency_excludes_store_round_trips(server_url: str, prefix: str,
                                                      breaker: BreakerSettings | None) -> None:
    clock = FakeClock()
    strategy = Observing()
    lb = LoadBalancer(slow_store_client(server_url, clock), "api", strategy, prefix=prefix,
                      breaker=breaker, clock=clock, subscribe=False)
    lb.add_backend(Backend("a", "10.0.0.1:80"))
    for _ in range(3):
        lb.execute(lambda b: None)
    with lb.connection():
        pass
    (stats,) = lb.get_statistics().per_backend
    assert stats.requests == 4
    assert stats.latency_ms == 0.0                      # every store call took 1 s here
    assert strategy.samples == [0.0] * 4
    lb.close()


# -- item 15: pool names and backend ids that derive breaker names -------------------------------

def test_pool_names_leave_room_for_breaker_names(r: redis.Redis, prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"name.*127"):
        LoadBalancer(r, "p" * 128, prefix=prefix)
    lb = LoadBalancer(r, "p" * 127, prefix=prefix)
    lb.add_backend(Backend("b" * 128, "10.0.0.1:80"))
    assert lb.execute(lambda b: b.id) == "b" * 128
    lb.close()


def test_backend_id_with_slash_keeps_its_open_breaker(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=BreakerSettings(failure_threshold=1),
                      subscribe=False)
    for bid in ("zone/a", "a"):
        lb.add_backend(Backend(bid, "10.0.0.1:80"))
    cb = lb.breaker_for("zone/a")
    assert cb is not None
    cb.state()                                          # this process knows it closed
    lb.record_result("zone/a", 0.01, False)             # trips it
    assert cb.state().state == "open"
    picks = {lb.select_backend().id for _ in range(10)}
    assert picks == {"a"}
    assert lb._pool_breakers._open_ids == {"zone/a"}


# -- item 13: an empty view because the store was never reached ----------------------------------

@pytest.mark.parametrize("policy", ["fail_open", "local"])
def test_select_during_an_outage_says_the_store_is_down(policy: str) -> None:
    c = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    lb = LoadBalancer(c, "api", on_store_error=policy)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable, match="never reached"):
        lb.select_backend()
    with pytest.raises(StoreUnavailable):
        lb.execute(lambda b: b)
    lb.close()


def test_backend_ids_must_be_valid_unicode() -> None:
    with pytest.raises(ConfigError, match="id"):
        Backend("\ud800")


def _ids(backends: Sequence[Backend]) -> list[str]:
    return [b.id for b in backends]


def test_an_empty_reachable_pool_still_says_no_backend(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    with pytest.raises(NoBackendAvailable, match="among 0"):
        lb.select_backend(Context())
    assert _ids(lb.backends()) == []


# -- issue #12: flush_releases() waits for a flush already in flight ---------------------------

def test_flush_releases_waits_for_a_flush_another_thread_has_in_flight(
        r: redis.Redis, server_url: str, prefix: str) -> None:
    """A release the background flusher (here: another thread) took just before
    ``flush_releases()`` is written when ``flush_releases()`` returns. The other thread's
    flush is held up by ``CLIENT PAUSE ... WRITE`` (the server answers reads meanwhile), so
    the count read right after ``flush_releases()`` shows whether it waited."""
    import threading

    c = redis.Redis.from_url(server_url)
    # release_delay_s=1: the background flusher rarely runs; the test's thread plays it.
    lb = LoadBalancer(c, "api", prefix=prefix, breaker=None, release="deferred",
                      release_delay_s=1.0)
    try:
        lb.add_backend(Backend("n1", "10.0.0.1:80"))
        conns = lb.keys[2]
        for _ in range(5):
            assert lb.execute(lambda b: b.id) == "n1"     # its release waits in this process
            if not lb._leases.pending:                    # the background flusher took it
                lb.flush_releases()
                continue
            r.client_pause(3000, all=False)               # writes (scripts) wait 3 s
            flusher = threading.Thread(target=lb.flush_releases, daemon=True)
            flusher.start()
            try:
                wait_for(lambda: not lb._leases.pending, "the other thread took the release")
                assert lb._leases.in_flight(), "taken but not in flight"
                lb.flush_releases()      # nothing pending here: it waits for the other one
                held = int(r.hget(conns, "n1") or 0)
            finally:
                r.client_unpause()
                flusher.join(30)
            assert not flusher.is_alive()
            assert held == 0, f"flush_releases() returned with {held} release(s) unwritten"
            assert not lb._leases.in_flight()
            break
        else:
            pytest.fail("the background flusher took every release first")
    finally:
        lb.close()
        c.close()


def test_aio_flush_releases_waits_for_a_flush_another_task_has_in_flight(
        r: redis.Redis, server_url: str, prefix: str) -> None:
    """The asyncio twin: the wait is a sleep step of the same event loop, so the task whose
    flush is in flight still runs to its end."""
    import asyncio

    import redis.asyncio

    from distlb import aio

    async def scenario() -> int:
        c = redis.asyncio.Redis.from_url(server_url)
        lb = aio.LoadBalancer(c, "api", prefix=prefix, breaker=None, release="deferred",
                              release_delay_s=1.0)
        try:
            await lb.add_backend(Backend("n1", "10.0.0.1:80"))
            for _ in range(5):
                assert await lb.execute(lambda b: b.id) == "n1"
                if lb._leases.pending:
                    break
                await lb.flush_releases()      # the background flusher took it: again
            else:
                pytest.fail("the background flusher took every release first")
            r.client_pause(3000, all=False)
            try:
                other = asyncio.create_task(lb.flush_releases())
                deadline = time.monotonic() + 30
                while lb._leases.pending or not lb._leases.in_flight():
                    assert time.monotonic() < deadline, "the other task never took it"
                    await asyncio.sleep(0.005)
                await lb.flush_releases()
                held = int(r.hget(lb.keys[2], "n1") or 0)
            finally:
                r.client_unpause()
            await asyncio.wait_for(other, 30)
            return held
        finally:
            await lb.aclose()
            await c.aclose()

    held = asyncio.run(scenario())
    assert held == 0, f"flush_releases() returned with {held} release(s) unwritten"
