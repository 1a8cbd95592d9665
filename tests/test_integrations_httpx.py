"""The httpx transports against real HTTP backends on loopback and the real server."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

import distlb.aio as aio
from distlb import (
    Backend,
    BreakerSettings,
    ConfigError,
    Context,
    Limit,
    LoadBalancer,
    NoBackendAvailable,
    RateLimited,
    RetryPolicy,
)
from distlb.integrations.httpx import (
    AsyncLoadBalancedTransport,
    LoadBalancedTransport,
    UpstreamStatus,
)
from distlb.strategies import NoBackendAvailable as NoBackend
from tests import integration_workers
from tests.http_backends import HttpBackend
from tests.test_multiprocess import run_workers


class Ordered:
    """A deterministic strategy: the healthy, not excluded backend with the lowest id."""

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        exclude = ctx.exclude if ctx is not None else frozenset()
        ok = sorted((b for b in backends if b.healthy and b.id not in exclude),
                    key=lambda b: b.id)
        if not ok:
            raise NoBackend("none left")
        return ok[0]


@pytest.fixture
def web() -> Iterator[list[HttpBackend]]:
    servers = [HttpBackend(f"b{i}") for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def dead_address() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def pool(r: Any, prefix: str, servers: list[HttpBackend], **kw: Any) -> LoadBalancer:
    kw.setdefault("strategy", Ordered())
    kw.setdefault("retry_policy", RetryPolicy.fixed(0.0, max_attempts=3))
    lb = LoadBalancer(r, "users", prefix=prefix, **kw)
    for s in servers:
        lb.add_backend(Backend(s.name, s.address))
    return lb


def test_requests_go_to_the_selected_backend_with_a_lease_and_statistics(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    from distlb import RoundRobinBalancer
    lb = pool(r, prefix, web, strategy=RoundRobinBalancer())
    with httpx.Client(mounts={"http://users": LoadBalancedTransport(lb)}) as c:
        answers = [c.get(f"http://users/profile/{i}?x=1") for i in range(6)]
        other = c.post("http://users/items", content=b"payload")
    assert all(a.status_code == 200 for a in answers)
    names = [a.json()["name"] for a in answers]
    assert sorted(set(names)) == ["b0", "b1"] and names.count("b0") == 3
    first = answers[0]
    assert first.json()["host"] == "users"                     # the logical Host is kept
    assert first.json()["path"] == "/profile/0?x=1"
    assert str(first.request.url) == "http://users/profile/0?x=1"
    assert first.extensions["distlb.backend"] == first.json()["name"]
    assert other.json()["body"] == "payload" and other.json()["method"] == "POST"
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["b0"].requests + stats["b1"].requests == 7
    assert stats["b0"].active_connections == stats["b1"].active_connections == 0
    lb.close()


def test_host_header_backend_option(r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    lb = pool(r, prefix, web[:1])
    with httpx.Client(transport=LoadBalancedTransport(lb, host_header="backend")) as c:
        assert c.get("http://users/").json()["host"] == web[0].address
    lb.close()


def test_a_5xx_is_a_failure_retried_on_another_backend(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(500)
    lb = pool(r, prefix, web)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        answer = c.get("http://users/x")
    assert answer.status_code == 200 and answer.json()["name"] == "b1"
    assert web[0].served == 1 and web[1].served == 1
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["b0"].errors == 1 and stats["b1"].errors == 0
    lb.close()


def test_post_is_not_retried_once_it_may_have_reached_a_backend(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(502)
    lb = pool(r, prefix, web)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        answer = c.post("http://users/x", content=b"once")
        assert answer.status_code == 502 and answer.json()["name"] == "b0"
        assert web[1].served == 0                                # never sent twice
        # ... unless the caller says POST is safe to retry here.
    with httpx.Client(transport=LoadBalancedTransport(
            lb, retry_methods={"GET", "POST"})) as c:
        assert c.post("http://users/x", content=b"twice").json()["name"] == "b1"
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["b0"].errors == 2
    lb.close()


def test_a_connect_failure_is_retried_even_for_post(r: redis.Redis, prefix: str,
                                                    web: list[HttpBackend]) -> None:
    lb = pool(r, prefix, web[1:])
    lb.add_backend(Backend("a-dead", dead_address()))     # sorts first: tried first
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        answer = c.post("http://users/x", content=b"body")
    assert answer.json() == {"name": "b1", "host": "users", "method": "POST", "path": "/x",
                             "body": "body"}
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["a-dead"].errors == 1
    lb.close()


def test_connect_errors_surface_as_httpx_errors_when_attempts_run_out(
        r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "users", prefix=prefix, strategy=Ordered(),
                      retry_policy=RetryPolicy.fixed(0.0, max_attempts=2))
    lb.add_backend(Backend("x", dead_address()))
    lb.add_backend(Backend("y", dead_address()))
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c, \
            pytest.raises(httpx.ConnectError):
        c.get("http://users/")
    lb.close()


def test_timeouts_are_failures_and_retried(r: redis.Redis, prefix: str,
                                           web: list[HttpBackend]) -> None:
    web[0].delay_s = 3.0
    lb = pool(r, prefix, web)
    with httpx.Client(transport=LoadBalancedTransport(lb), timeout=0.3) as c:
        answer = c.get("http://users/slow")
    assert answer.json()["name"] == "b1"
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["b0"].errors == 1
    lb.close()


def test_retry_after_is_honoured_before_the_retry(r: redis.Redis, prefix: str,
                                                  web: list[HttpBackend]) -> None:
    web[0].fail(503, retry_after="1")
    lb = pool(r, prefix, web)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        answer = c.get("http://users/")
    assert answer.json()["name"] == "b1"
    waited = web[1].seen[0][1] - web[0].seen[0][1]
    assert waited >= 1.0, waited                     # not retried sooner
    lb.close()


def test_a_long_retry_after_is_not_retried_at_all(r: redis.Redis, prefix: str,
                                                  web: list[HttpBackend]) -> None:
    web[0].fail(503, retry_after="120")
    lb = pool(r, prefix, web)
    started = time.monotonic()
    with httpx.Client(transport=LoadBalancedTransport(lb, max_retry_after_s=5)) as c:
        answer = c.get("http://users/")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "120"
    assert web[1].served == 0 and time.monotonic() - started < 5
    lb.close()


def test_failure_statuses_are_configurable(r: redis.Redis, prefix: str,
                                           web: list[HttpBackend]) -> None:
    web[0].fail(429)
    lb = pool(r, prefix, web)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert c.get("http://users/").status_code == 429            # not a failure by default
    with httpx.Client(transport=LoadBalancedTransport(
            lb, failure_statuses={429, *range(500, 600)})) as c:
        assert c.get("http://users/").json()["name"] == "b1"
    web[0].fail(500)
    with httpx.Client(transport=LoadBalancedTransport(lb, failure_statuses=())) as c:
        assert c.get("http://users/").status_code == 500            # 5xx is now a success
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["b0"].errors == 1
    lb.close()


def test_breakers_stop_traffic_to_a_failing_backend_and_let_it_back(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(500)
    lb = pool(r, prefix, web, breaker=BreakerSettings(failure_threshold=2, open_timeout_s=0.3,
                                                      success_threshold=1,
                                                      half_open_max_requests=1))
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        for _ in range(5):
            assert c.get("http://users/").json()["name"] == "b1"
        assert web[0].served == 2                           # the breaker opened after 2
        assert lb.breaker_for("b0").state().state == "open"
        web[0].recover()
        deadline = time.monotonic() + 30
        while c.get("http://users/").json()["name"] != "b0":
            assert time.monotonic() < deadline, "b0 never came back"
    assert lb.breaker_for("b0").state().state == "closed"
    lb.close()


def test_pool_limits_and_no_backend_are_raised(r: redis.Redis, prefix: str,
                                               web: list[HttpBackend]) -> None:
    lb = pool(r, prefix, web, rate_limit=Limit(1, 1))
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert c.get("http://users/").status_code == 200
        with pytest.raises(RateLimited):
            c.get("http://users/")
    lb.close()
    empty = LoadBalancer(r, "nobody", prefix=prefix)
    with httpx.Client(transport=LoadBalancedTransport(empty)) as c, \
            pytest.raises(NoBackendAvailable):
        c.get("http://nobody/")
    empty.close()


def test_without_a_retry_policy_the_failure_is_returned(r: redis.Redis, prefix: str,
                                                        web: list[HttpBackend]) -> None:
    web[0].fail(500)
    lb = pool(r, prefix, web, retry_policy=None)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert c.get("http://users/").status_code == 500
    assert web[1].served == 0
    lb.close()


def test_the_pools_policy_is_used_as_it_is_and_decides_by_class(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(500)
    policy = RetryPolicy.fixed(0.0, max_attempts=3).with_retry_on((ConnectionError,
                                                                   TimeoutError))
    lb = pool(r, prefix, web, retry_policy=policy)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert lb.retry_policy is policy                     # never replaced
        assert c.get("http://users/").status_code == 500     # a 5xx is not a network error
        assert web[1].served == 0
        lb.update_backend_health("b0", False)
        lb.add_backend(Backend("a-dead", dead_address()))    # a ConnectionError: retried
        assert c.get("http://users/").json()["name"] == "b1"
    lb.retry_policy = policy.with_retry_on(UpstreamStatus)   # now failure statuses are
    lb.remove_backend("a-dead")
    lb.update_backend_health("b0", True)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert c.get("http://users/").json()["name"] == "b1"
    assert web[0].served == 2 and web[1].served == 2
    lb.close()


def test_retry_after_is_the_policys_wait_before_the_next_lease(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    """The wait is the policy's sleep (its hooks see it, max_total_s counts it), not a
    sleep inside the next attempt holding the next backend's lease and timed as its
    latency."""
    web[0].fail(503, retry_after="2")
    waits: list[float] = []
    policy = RetryPolicy.fixed(0.0, max_attempts=3).with_before_sleep(
        lambda st: waits.append(st.delay_s))
    lb = pool(r, prefix, web, retry_policy=policy)
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert c.get("http://users/").json()["name"] == "b1"
    assert waits == [2.0]
    assert web[1].seen[0][1] - web[0].seen[0][1] >= 2.0       # not retried sooner
    stats = {s.id: s for s in lb.get_statistics().per_backend}
    assert stats["b1"].latency_ms < 1500, stats["b1"]          # the wait is not b1's latency
    lb.close()


def test_a_retry_after_beyond_max_total_s_is_not_waited(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(503, retry_after="3")
    lb = pool(r, prefix, web, retry_policy=RetryPolicy.fixed(0.0, max_attempts=3)
              .with_max_total_time(1.0))
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        answer = c.get("http://users/")
    assert answer.status_code == 503 and web[1].served == 0   # gave up: the deadline
    lb.close()


def test_an_error_marked_not_retryable_is_never_retried(r: redis.Redis, prefix: str,
                                                        web: list[HttpBackend]) -> None:
    """The marker the transports use, on any exception: ``retryable = False``."""

    class Refused(Exception):
        retryable = False

    calls: list[str] = []

    def fn(backend: Backend) -> None:
        calls.append(backend.id)
        raise Refused(backend.id)

    lb = pool(r, prefix, web)                        # retry_on=Exception, 3 attempts
    with pytest.raises(Refused):
        lb.execute(fn)
    assert calls == ["b0"]
    lb.close()


def test_context_reaches_the_pool(r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    lb = pool(r, prefix, web, client_limit=Limit(1, 1))

    def ctx(method: str, url: str, headers: Any) -> Context:
        return Context(client_id=headers.get("x-user"))

    with httpx.Client(transport=LoadBalancedTransport(lb, context=ctx)) as c:
        assert c.get("http://users/", headers={"x-user": "ann"}).status_code == 200
        assert c.get("http://users/", headers={"x-user": "bob"}).status_code == 200
        with pytest.raises(RateLimited):
            c.get("http://users/", headers={"x-user": "ann"})
    lb.close()


@pytest.mark.parametrize("kw", [
    {"failure_statuses": [700]}, {"failure_statuses": ["500"]}, {"retry_methods": [1]},
    {"max_retry_after_s": -1}, {"max_retry_after_s": "5"}, {"host_header": "x"},
    {"context": 3}])
def test_bad_options_raise_config_error(r: redis.Redis, prefix: str, kw: dict[str, Any]) -> None:
    lb = LoadBalancer(r, "users", prefix=prefix)
    with pytest.raises(ConfigError):
        LoadBalancedTransport(lb, **kw)


async def test_the_wrong_balancer_flavour_is_refused(r: redis.Redis, ar: Any,
                                                     prefix: str) -> None:
    with pytest.raises(ConfigError, match="balancer"):
        LoadBalancedTransport(aio.LoadBalancer(ar, "users", prefix=prefix))
    with pytest.raises(ConfigError, match="balancer"):
        AsyncLoadBalancedTransport(LoadBalancer(r, "users", prefix=prefix))
    with pytest.raises(ConfigError, match="balancer"):
        LoadBalancedTransport(object())


async def test_async_transport_balances_retries_and_honours_retry_after(
        ar: redis.asyncio.Redis, prefix: str, web: list[HttpBackend]) -> None:
    lb = aio.LoadBalancer(ar, "users", Ordered(), prefix=prefix,
                          retry_policy=aio.RetryPolicy.fixed(0.0, max_attempts=3))
    for s in web:
        await lb.add_backend(Backend(s.name, s.address))
    policy = lb.retry_policy
    transport = AsyncLoadBalancedTransport(lb)
    assert lb.retry_policy is policy                             # used, never replaced
    async with httpx.AsyncClient(mounts={"http://users": transport}) as c:
        ok = await c.get("http://users/a")
        assert ok.json()["name"] == "b0" and ok.json()["host"] == "users"
        web[0].fail(503, retry_after="1")
        retried = await c.get("http://users/b")
        assert retried.json()["name"] == "b1"
        assert web[1].seen[0][1] - web[0].seen[-1][1] >= 1.0
        posted = await c.post("http://users/c", content=b"x")
        assert posted.status_code == 503 and web[1].served == 1    # POST not retried
    stats = {s.id: s for s in (await lb.get_statistics()).per_backend}
    assert stats["b0"].errors == 2 and stats["b0"].active_connections == 0
    lb.close()


@pytest.mark.multiprocess
def test_client_processes_share_the_pool_breakers_and_ride_out_a_failing_backend(
        server_url: str) -> None:
    prefix = f"hx{uuid.uuid4().hex[:8]}"
    servers = [HttpBackend(f"b{i}") for i in range(3)]
    admin = LoadBalancer(redis.Redis.from_url(server_url), "users", prefix=prefix)
    for s in servers:
        admin.add_backend(Backend(s.name, s.address))
    servers[2].fail(500)
    import threading

    def recover_later() -> None:
        # Recover once every worker is sending (each has seen at least a few requests).
        deadline = time.monotonic() + 30
        while sum(s.served for s in servers) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        servers[2].recover()
        recovered_at.append(servers[2].served)

    recovered_at: list[int] = []
    t = threading.Thread(target=recover_later)
    t.start()
    try:
        results = run_workers(integration_workers.httpx_client,
                              [(server_url, prefix, 3.0)] * 3)
        t.join()
        codes: dict[int, int] = {}
        for res in results:
            for code, n in res["codes"].items():
                codes[code] = codes.get(code, 0) + n
        failed_on_b2 = recovered_at[0]
        print(f"codes {codes}, served {[s.served for s in servers]}, "
              f"b2 answered 500 {failed_on_b2} times")
        assert set(codes) == {200}                      # every failure was retried elsewhere
        assert sum(codes.values()) >= 150
        # One breaker for the fleet: b2 saw only a handful of requests while failing
        # (the threshold, calls in flight, and one probe per open period), not a third.
        assert failed_on_b2 <= 30
        assert servers[2].served > failed_on_b2          # and took traffic again after
        stats = {s.id: s for s in admin.get_statistics().per_backend}
        assert sum(s.active_connections for s in stats.values()) == 0
        assert stats["b2"].errors == failed_on_b2
    finally:
        for s in servers:
            s.stop()
        admin.close()


def test_when_retries_run_out_of_backends_the_last_failure_is_returned(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(500)
    lb = pool(r, prefix, web[:1])            # one backend, three attempts allowed
    with httpx.Client(transport=LoadBalancedTransport(lb)) as c:
        assert c.get("http://users/").status_code == 500
    lb.close()
