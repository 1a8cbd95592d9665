"""LoadBalancer in one process: registry, leases, selection, execute, statistics, health."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

import distlb.aio as aio
from distlb import (
    Backend,
    BackendExists,
    BreakerSettings,
    ConfigError,
    Limit,
    LoadBalancer,
    LoadBalancerContext,
    NoBackendAvailable,
    RateLimited,
    RetryPolicy,
    RoundRobinBalancer,
    StoreUnavailable,
    TrafficShaper,
    UnknownBackend,
)
from distlb.embedded import EmbeddedServer
from tests.backends import TcpBackend, call

pytestmark = pytest.mark.lua


@pytest.fixture
def tcp() -> Iterator[list[TcpBackend]]:
    servers = [TcpBackend(f"node{i}") for i in range(3)]
    yield servers
    for s in servers:
        s.kill()


def pool(client: Any, prefix: str, servers: list[TcpBackend], **kw: Any) -> LoadBalancer:
    lb = LoadBalancer(client, "api", kw.pop("strategy", RoundRobinBalancer()), prefix=prefix,
                      **kw)
    for s in servers:
        lb.add_backend(Backend(s.name, s.address, weight=100))
    return lb


def test_registry_changes_and_errors(client: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(client, "api", prefix=prefix)
    lb.add_backend(Backend("node1", "10.0.0.1:8080", weight=100, metadata={"zone": "a"}))
    lb.add_backend(Backend("node2", "[2001:db8::1]:443", weight=50))
    with pytest.raises(BackendExists, match="node1"):
        lb.add_backend(Backend("node1", "10.0.0.9:8080"))
    with pytest.raises(UnknownBackend, match="nope"):
        lb.update_backend_health("nope", False)
    with pytest.raises(UnknownBackend):
        lb.remove_backend("nope")
    lb.update_backend_weight("node2", 70)
    lb.update_backend_health("node1", False)
    by_id = {b.id: b for b in lb.backends()}
    assert by_id["node1"].healthy is False and by_id["node1"].metadata == {"zone": "a"}
    assert by_id["node2"].weight == 70 and by_id["node2"].address == "[2001:db8::1]:443"
    assert lb.select_backend().id == "node2"
    lb.remove_backend("node2")
    with pytest.raises(NoBackendAvailable):
        lb.select_backend()


@pytest.mark.parametrize("address", ["10.0.0.1", "10.0.0.1:0", "host:70000", ":80",
                                     "2001:db8::1:443", "[zz::1]:80", "bad host:80", 42])
def test_bad_addresses(r: redis.Redis, prefix: str, address: Any) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix)
    with pytest.raises(ConfigError, match="address"):
        lb.add_backend(Backend("x", address))


def test_registry_change_reaches_another_process_view(server_url: str, prefix: str) -> None:
    a = LoadBalancer(redis.Redis.from_url(server_url), "api", prefix=prefix, refresh_s=60)
    b = LoadBalancer(redis.Redis.from_url(server_url, decode_responses=True), "api",
                     prefix=prefix, refresh_s=60)
    a.add_backend(Backend("node1", "10.0.0.1:80"))
    assert b.select_backend().id == "node1"
    deadline = time.monotonic() + 2
    while b._subscribed_since() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.update_backend_health("node1", False)
    a.add_backend(Backend("node2", "10.0.0.2:80"))
    while b.select_backend().id != "node2":     # the event marks b's view stale at once
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_connection_lease_counts_and_releases(r: redis.Redis, prefix: str,
                                              tcp: list[TcpBackend]) -> None:
    lb = pool(r, prefix, tcp)
    conns = f"{prefix}:{{pool:api}}:conns"
    with lb.connection() as b1, lb.connection() as b2:
        assert b1.id != b2.id
        assert {k.decode(): int(v) for k, v in r.hgetall(conns).items() if int(v)} == \
            {b1.id: 1, b2.id: 1}
        assert call(b1.address) == b1.id
    assert all(int(v) == 0 for v in r.hgetall(conns).values())
    with pytest.raises(ValueError), lb.connection() as b3:
        raise ValueError("the caller's bug")
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats[b3.id].requests == 1                 # recorded, as a non-backend error
    assert r.zrange(f"{prefix}:{{pool:api}}:leases", 0, -1) == [b"~keep"]   # no lease held


def test_a_dead_holder_gives_its_connections_back_after_the_ttl(r: redis.Redis, prefix: str,
                                                                tcp: list[TcpBackend]) -> None:
    lb = pool(r, prefix, tcp, lease_ttl_s=0.3)
    lease = lb._run(lb._lease(None, set()))          # taken, never released or renewed
    lb._leases.held.clear()
    assert lb.backends()[0].active_connections + lb.backends()[1].active_connections \
        + lb.backends()[2].active_connections == 1
    time.sleep(0.35)
    assert sum(b.active_connections for b in lb.backends()) == 0
    assert lease.backend.id in {s.name for s in tcp}


def test_leases_renew_while_a_long_call_runs(r: redis.Redis, prefix: str,
                                             tcp: list[TcpBackend]) -> None:
    lb = pool(r, prefix, tcp, lease_ttl_s=0.3)
    seen = []

    def slow(backend: Backend) -> None:
        time.sleep(0.7)                                # over two lease TTLs
        seen.append(sum(b.active_connections for b in lb.backends()))

    lb.execute(slow)
    assert seen == [1]
    lb.close()


def test_execute_retries_on_another_backend_and_breakers_drop_the_dead(
        r: redis.Redis, prefix: str, tcp: list[TcpBackend]) -> None:
    lb = pool(r, prefix, tcp, retry_policy=RetryPolicy.fixed(0, max_attempts=3),
              breaker=BreakerSettings(failure_threshold=2, open_timeout_s=30))
    tcp[0].kill()
    answers = Counter(lb.execute(lambda b: call(b.address, 0.5)) for _ in range(30))
    assert set(answers) == {"node1", "node2"} and sum(answers.values()) == 30
    assert tcp[0].served == 0
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["node0"].breaker == "open" and stats["node0"].errors == 2
    assert str(lb.get_statistics()).startswith("Backends: 3/3, Connections: 0, Avg Response:")


def test_execute_without_retries_raises_and_records(r: redis.Redis, prefix: str,
                                                    tcp: list[TcpBackend]) -> None:
    lb = pool(r, prefix, tcp[:1], breaker=None)
    tcp[0].failing = True
    with pytest.raises(ConnectionError):
        lb.execute(lambda b: call(b.address))
    s = lb.get_statistics().per_backend[0]
    assert (s.requests, s.errors, s.breaker) == (1, 1, "-")
    lb.record_result("node0", 0.25, True)
    s = lb.get_statistics().per_backend[0]
    assert s.requests == 2 and s.latency_ms > 20


def test_traffic_shaper_admission(r: redis.Redis, prefix: str, tcp: list[TcpBackend]) -> None:
    shaper = TrafficShaper(r, "edge", client_limit=Limit(0.001, 2), prefix=prefix)
    lb = pool(r, prefix, tcp, traffic_shaper=shaper)
    ctx = LoadBalancerContext(client_id="alice")
    assert lb.execute(lambda b: b.id, ctx=ctx) and lb.execute(lambda b: b.id, ctx=ctx)
    with pytest.raises(RateLimited, match="client:alice"):
        lb.execute(lambda b: b.id, ctx=ctx)


def test_least_connections_sees_leases(r: redis.Redis, prefix: str,
                                       tcp: list[TcpBackend]) -> None:
    from distlb import LeastConnectionsBalancer
    lb = pool(r, prefix, tcp, strategy=LeastConnectionsBalancer())
    held = [lb.connection() for _ in range(6)]
    ids = Counter(g.__enter__().id for g in held)
    assert sorted(ids.values()) == [2, 2, 2]
    for g in held:
        g.__exit__(None, None, None)


def test_health_checks_mark_backends_for_everyone_with_one_checker(
        server_url: str, prefix: str, tcp: list[TcpBackend]) -> None:
    a = pool(redis.Redis.from_url(server_url), prefix, tcp)
    b = LoadBalancer(redis.Redis.from_url(server_url), "api", prefix=prefix)
    from distlb._background import tcp_check
    tcp[1].kill()
    assert a.check_health(tcp_check(5.0)) == 1      # a holds the checker role
    assert b.check_health(tcp_check(5.0)) == 0      # b does not: no double probing
    healthy = {x.id: x.healthy for x in b.backends()}
    assert healthy == {"node0": True, "node1": False, "node2": True}


def test_store_outage(own_server: EmbeddedServer, prefix: str, tcp: list[TcpBackend]) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    r = own_server.client(socket_timeout=0.2, socket_connect_timeout=0.2,
                          retry=Retry(NoBackoff(), 0))
    lb = pool(r, prefix, tcp, breaker=None)
    closed = LoadBalancer(r, "api", prefix=prefix, on_store_error="fail_closed", breaker=None)
    assert lb.execute(lambda b: b.id)
    assert closed.execute(lambda b: b.id)
    own_server.stop()
    # fail_open keeps balancing on the last known registry, without leases
    assert {lb.execute(lambda b: b.id) for _ in range(6)} == {"node0", "node1", "node2"}
    with pytest.raises(StoreUnavailable):
        closed.execute(lambda b: b.id)
    with pytest.raises(StoreUnavailable):
        lb.add_backend(Backend("node9", "10.0.0.9:80"))


@pytest.mark.cluster
def test_balancer_on_cluster(rc: redis.cluster.RedisCluster, prefix: str,
                             tcp: list[TcpBackend]) -> None:
    lb = pool(rc, prefix, tcp, retry_policy=RetryPolicy.fixed(0, max_attempts=2))
    for node in rc.get_primaries():
        rc.get_redis_connection(node).script_flush()
    assert Counter(lb.execute(lambda b: call(b.address)) for _ in range(9)) == \
        Counter({"node0": 3, "node1": 3, "node2": 3})
    assert lb.get_statistics().connections == 0


def test_pool_limits_and_lease_in_one_round_trip(r: redis.Redis, prefix: str,
                                                 tcp: list[TcpBackend]) -> None:
    lb = pool(r, prefix, tcp, rate_limit=Limit(0.001, 3), client_limit=Limit(0.001, 1),
              breaker=None)
    alice, bob = LoadBalancerContext(client_id="alice"), LoadBalancerContext(client_id="bob")
    lb.config()      # the fleet-wide configuration: read once before the first admission
    before = lb.store_stats.calls
    assert lb.execute(lambda b: b.id, ctx=alice)
    assert lb.store_stats.calls - before == 2            # admit+lease, then release+record
    with pytest.raises(RateLimited, match="client:alice"):
        lb.execute(lambda b: b.id, ctx=alice)
    assert lb.execute(lambda b: b.id, ctx=bob) and lb.execute(lambda b: b.id)
    with pytest.raises(RateLimited, match="pool 'api'"):
        lb.execute(lambda b: b.id, ctx=LoadBalancerContext(client_id="carol"))
    # Denials took nothing: no lease, no connection, carol's bucket untouched.
    assert sum(b.active_connections for b in lb.backends()) == 0
    assert r.exists(f"{prefix}:{{pool:api}}:rl:c:carol") == 0


def test_a_recovering_backend_gets_probes_whatever_the_strategy(
        r: redis.Redis, prefix: str, tcp: list[TcpBackend]) -> None:
    from distlb import AdaptiveBalancer
    lb = pool(r, prefix, tcp, strategy=AdaptiveBalancer(),
              retry_policy=RetryPolicy.fixed(0, max_attempts=3),
              breaker=BreakerSettings(failure_threshold=2, open_timeout_s=0.3,
                                      success_threshold=2, half_open_max_requests=2))
    for _ in range(3):            # node0 failed: its breaker opens, its error-rate score is bad
        lb.record_result("node0", 0.5, False)
    assert lb.breaker_for("node0").state().state == "open"
    assert lb.strategy.select(lb.backends()).id != "node0"   # the strategy now avoids it
    time.sleep(0.35)              # node0 (never really down) is due for probes
    deadline = time.monotonic() + 3
    while lb.breaker_for("node0").state().state != "closed":
        assert time.monotonic() < deadline
        lb.execute(lambda b: call(b.address))
        time.sleep(0.01)


def test_a_forked_child_does_not_renew_its_parents_leases(r: redis.Redis, prefix: str,
                                                          tcp: list[TcpBackend]) -> None:
    import os
    lb = pool(r, prefix, tcp)
    guard = lb.connection()
    guard.__enter__()
    assert len(lb._leases.held) == 1
    pid = os.fork()
    if pid == 0:
        lb._run(lb._renew())          # nothing to renew in the child
        os._exit(0 if not lb._leases.held else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(lb._leases.held) == 1        # the parent still holds its lease
    guard.__exit__(None, None, None)


def test_a_forked_child_does_not_send_its_parents_deferred_releases(r: redis.Redis,
                                                                   prefix: str) -> None:
    import os
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None, release="deferred",
                      release_delay_s=1.0, refresh_s=3600, subscribe=False)
    lb.add_backend(Backend("n0", "10.0.0.1:80"))
    # execute's operation without the shell's background flusher: the release stays
    # pending, however slow the machine
    lb._run(lb._execute(lambda b: None, (), {}, None))
    assert len(lb._leases.pending) == 1
    sent = int(r.hget(f"{lb.key}:stats", "n0:requests") or 0)
    pid = os.fork()
    if pid == 0:
        lb._run(lb._flush())          # nothing to send in the child: the parent sends it
        os._exit(0 if not lb._leases.pending else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(r.hget(f"{lb.key}:stats", "n0:requests") or 0) == sent   # not sent by the child
    lb.close()                        # the parent's flush: counted once
    assert int(r.hget(f"{lb.key}:stats", "n0:requests") or 0) == sent + 1


def test_rate_limited_calls_do_not_earn_retries(r: redis.Redis, prefix: str,
                                                tcp: list[TcpBackend]) -> None:
    from distlb import RetryBudget
    budget = RetryBudget(r, "api", ratio=0.5, min_retries_per_s=0, prefix=prefix,
                         deposit_batch=1)
    lb = pool(r, prefix, tcp, rate_limit=Limit(0.001, 2),
              retry_policy=RetryPolicy.fixed(0, max_attempts=2).with_budget(budget))
    for _ in range(5):
        with contextlib.suppress(RateLimited):
            lb.execute(lambda b: b.id)
    assert budget.peek().deposits == 2      # the two admitted calls, not the three refused


@pytest.mark.parametrize("make, field", [
    (lambda: Backend("x" * 129, "10.0.0.1:80"), "id"),
    (lambda: Backend("", "10.0.0.1:80"), "id"),
    (lambda: Backend("n", "10.0.0.1:80", metadata={"x": object()}), "metadata"),
    (lambda: Backend("n", "10.0.0.1:80", healthy="yes"), "healthy"),  # type: ignore[arg-type]
])
def test_bad_backends(r: redis.Redis, prefix: str, make: Any, field: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix)
    with pytest.raises(ConfigError, match=field):
        lb.add_backend(make())
    with pytest.raises(ConfigError, match="backend_id"):
        lb.remove_backend(None)  # type: ignore[arg-type]
    assert r.keys(f"{prefix}:*") == []


def test_a_pool_in_use_never_expires(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix)
    lb.add_backend(Backend("n1", "10.0.0.1:80"))
    for k in lb.keys[:2]:
        r.pexpire(k, 5000)                     # as if the last registry change were long ago
    lb.backends()                              # any process's periodic snapshot read
    assert all(r.pttl(k) > 29 * 86400 * 1000 for k in lb.keys[:2])


# -- issue 12 item 3: execute at the speed of the wire ------------------------------------------

#: The commands pool.lua may run (everything but the EVALSHA around them and the tests' own).
POOL_COMMANDS = ("time", "hmget", "hget", "hgetall", "hset", "hsetnx", "hincrby", "hexists",
                 "hdel", "zadd", "zrem", "zrange", "zrangebyscore", "pexpire", "publish")


def _counts(r: redis.Redis) -> tuple[int, int]:
    """(script calls, commands run inside them) on the whole server so far."""
    stats = r.info("commandstats")

    def calls(name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
    return calls("evalsha") + calls("eval"), sum(calls(c) for c in POOL_COMMANDS)


@pytest.mark.real_server  # counts server commands with INFO commandstats, which fakeredis lacks
@pytest.mark.parametrize("breaker", [None, BreakerSettings()], ids=["no-breaker", "breaker"])
def test_execute_is_two_round_trips_and_at_most_ten_server_commands(
        own_server: EmbeddedServer, prefix: str, breaker: BreakerSettings | None) -> None:
    r = own_server.client()            # its own server: no other test's objects in the counts
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=breaker, refresh_s=3600,
                      subscribe=False)
    for i in range(5):
        lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80"))
    for _ in range(10):
        lb.execute(lambda b: b.id)                # the view, every breaker seen once
    calls, commands = _counts(r)
    n = 50
    for _ in range(n):
        lb.execute(lambda b: b.id)
    calls2, commands2 = _counts(r)
    assert calls2 - calls == 2 * n                # admit + lease, then release + statistics
    assert commands2 - commands <= 10 * n, (commands2 - commands) / n
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert sum(s.requests for s in stats.values()) == n + 10
    assert sum(s.active_connections for s in stats.values()) == 0
    lb.close()
    r.close()


@pytest.mark.real_server  # counts round trips with INFO commandstats, which fakeredis lacks
def test_a_deferred_release_rides_on_the_next_call_and_close_sends_the_rest(
        own_server: EmbeddedServer, prefix: str) -> None:
    r = own_server.client()            # its own server: no other test's objects in the counts
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None, refresh_s=3600, subscribe=False,
                      release="deferred", release_delay_s=1.0)
    for i in range(2):
        lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80"))
    lb.backends()
    conns, stats = f"{lb.key}:conns", f"{lb.key}:stats"
    calls = _counts(r)[0]
    assert lb.execute(lambda b: b.id) == "n0"
    assert lb.execute(lambda b: b.id) == "n1"     # its admit carried n0's release
    assert r.hget(conns, "n0") == b"0" and r.hget(stats, "n0:requests") == b"1"
    # One round trip per call, plus at most one flush per release_delay_s meanwhile.
    assert 2 <= _counts(r)[0] - calls <= 3
    lb.close()                                    # sends n1's release (if still pending)
    assert r.hget(conns, "n1") == b"0" and r.hget(stats, "n1:requests") == b"1"
    assert lb._leases.pending == []
    r.close()


def test_deferred_releases_reach_the_fleet_within_the_delay(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None, release="deferred",
                      release_delay_s=0.05)
    other = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    lb.add_backend(Backend("n0", "10.0.0.1:80"))
    for _ in range(20):
        lb.execute(lambda b: None)
    deadline = time.monotonic() + 30              # the flusher, however slow the machine
    while True:
        (n0,) = other.backends()
        stat = other.get_statistics().per_backend[0]
        if n0.active_connections == 0 and stat.requests == 20:
            break
        assert time.monotonic() < deadline, (n0, stat)
        time.sleep(0.02)
    assert lb._leases.pending == []
    lb.close()
    other.close()


def test_release_mode_is_checked(r: redis.Redis, prefix: str) -> None:
    with pytest.raises(ConfigError, match="release"):
        LoadBalancer(r, "api", prefix=prefix, release="later")
    with pytest.raises(ConfigError, match="release_delay_s"):
        LoadBalancer(r, "api", prefix=prefix, release="deferred", release_delay_s=5)
    assert r.keys(f"{prefix}:*") == []


def test_aio_deferred_releases_are_sent_by_aclose(server_url: str, r: redis.Redis,
                                                  prefix: str) -> None:
    async def main() -> None:
        c = redis.asyncio.Redis.from_url(server_url)
        lb = aio.LoadBalancer(c, "api", prefix=prefix, breaker=None, release="deferred",
                              release_delay_s=1.0)
        await lb.add_backend(Backend("n0", "10.0.0.1:80"))
        await asyncio.gather(*(lb.execute(lambda b: None) for _ in range(8)))
        await lb.aclose()
        deadline = time.monotonic() + 30
        while r.hget(f"{lb.key}:stats", "n0:requests") != b"8":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert r.hget(f"{lb.key}:conns", "n0") == b"0"
        await c.aclose()

    asyncio.run(main())


def test_removing_a_backend_drops_its_leases(r: redis.Redis, prefix: str) -> None:
    """A lease held proves its backend exists (the release trusts it): so a removed
    backend's leases go with it, and their late release neither counts nor records."""
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    lb.add_backend(Backend("n0", "10.0.0.1:80"))
    other = LoadBalancer(r, "api", prefix=prefix, breaker=None)
    with lb.connection() as b:
        other.remove_backend(b.id)
        assert r.zrange(f"{lb.key}:leases", 0, -1) == [b"~keep"]
    assert r.hgetall(f"{lb.key}:conns") == {}
    assert r.hgetall(f"{lb.key}:stats") == {}
    lb.close()
    other.close()
