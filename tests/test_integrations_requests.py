"""The requests adapter against real HTTP backends on loopback and the real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import requests

from distlb import Backend, ConfigError, LoadBalancer, RetryPolicy, RoundRobinBalancer
from distlb.integrations.requests import LoadBalancedAdapter
from tests.http_backends import HttpBackend
from tests.test_integrations_httpx import dead_address, pool


@pytest.fixture
def web() -> Iterator[list[HttpBackend]]:
    servers = [HttpBackend(f"b{i}") for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def session(lb: LoadBalancer, **kw: object) -> requests.Session:
    s = requests.Session()
    s.mount("http://users/", LoadBalancedAdapter(lb, **kw))  # type: ignore[arg-type]
    return s


def test_requests_are_balanced_with_the_logical_host_kept(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    lb = pool(r, prefix, web, strategy=RoundRobinBalancer())
    with session(lb) as s:
        answers = [s.get(f"http://users/p/{i}") for i in range(4)]
        posted = s.post("http://users/items", data=b"payload")
    assert sorted(a.json()["name"] for a in answers) == ["b0", "b0", "b1", "b1"]
    assert answers[0].json()["host"] == "users" and answers[0].url == "http://users/p/0"
    assert answers[0].distlb_backend == answers[0].json()["name"]  # type: ignore[attr-defined]
    assert posted.json()["body"] == "payload"
    stats = {st.id: st for st in lb.get_statistics().per_backend}
    assert stats["b0"].requests + stats["b1"].requests == 5
    assert stats["b0"].active_connections == stats["b1"].active_connections == 0
    lb.close()


def test_failures_retry_elsewhere_but_post_only_after_a_connect_failure(
        r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(500)
    lb = pool(r, prefix, web)
    with session(lb) as s:
        assert s.get("http://users/").json()["name"] == "b1"
        answer = s.post("http://users/", data=b"x")
        assert answer.status_code == 500 and web[1].served == 1          # not retried
    lb.update_backend_health("b0", False)
    lb.add_backend(Backend("a-dead", dead_address()))
    with session(lb) as s:
        assert s.post("http://users/", data=b"y").json()["name"] == "b1"  # never sent: retried
    stats = {st.id: st for st in lb.get_statistics().per_backend}
    assert stats["b0"].errors == 2 and stats["a-dead"].errors == 1
    lb.close()


def test_retry_after_and_timeouts(r: redis.Redis, prefix: str, web: list[HttpBackend]) -> None:
    web[0].fail(503, retry_after="1")
    lb = pool(r, prefix, web)
    with session(lb) as s:
        assert s.get("http://users/").json()["name"] == "b1"
        assert web[1].seen[0][1] - web[0].seen[0][1] >= 1.0
        web[0].fail(503, retry_after="60")
        assert s.get("http://users/").status_code == 503 and web[1].served == 1
        web[0].recover()
        web[0].delay_s = 3.0
        assert s.get("http://users/", timeout=0.3).json()["name"] == "b1"
    lb.close()


def test_connection_errors_surface_as_requests_errors(r: redis.Redis, prefix: str) -> None:
    lb = pool(r, prefix, [])
    lb.add_backend(Backend("x", dead_address()))
    with session(lb) as s, pytest.raises(requests.ConnectionError):
        s.get("http://users/")
    lb.close()


def test_bad_options(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "users", prefix=prefix)
    with pytest.raises(ConfigError, match="failure_statuses"):
        LoadBalancedAdapter(lb, failure_statuses=[99])
    with pytest.raises(ConfigError, match="balancer"):
        LoadBalancedAdapter("redis://x")
    with pytest.raises(ConfigError, match="max_retries"):     # one retry loop: the pool's
        LoadBalancedAdapter(lb, max_retries=3)


def test_retry_after_is_the_policys_wait(r: redis.Redis, prefix: str,
                                         web: list[HttpBackend]) -> None:
    web[0].fail(503, retry_after="1")
    waits: list[float] = []
    policy = RetryPolicy.fixed(0.0, max_attempts=3).with_before_sleep(
        lambda st: waits.append(st.delay_s))
    lb = pool(r, prefix, web, retry_policy=policy)
    with session(lb) as s:
        assert s.get("http://users/").json()["name"] == "b1"
        assert lb.retry_policy is policy                      # used, never replaced
    assert waits == [1.0]
    stats = {st.id: st for st in lb.get_statistics().per_backend}
    assert stats["b1"].latency_ms < 900, stats["b1"]          # the wait is not b1's latency
    lb.close()
