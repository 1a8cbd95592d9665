"""A retry policy that has tried every backend of the pool ends with the last real failure
(chained to the NoBackendAvailable that ended it), not with a bare NoBackendAvailable."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from distlb import Backend, LoadBalancer, NoBackendAvailable, RetryPolicy
from distlb.retry import Fixed


class Refused(Exception):
    pass


def add_two(lb: Any) -> None:
    lb.add_backend(Backend("n1", "10.0.0.1:80"))
    lb.add_backend(Backend("n2", "10.0.0.2:80"))


@pytest.mark.parametrize("release", ["sync", "deferred"])
def test_every_backend_failed_raises_the_last_failure(r: redis.Redis, prefix: str,
                                                      release: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None, release=release,
                      retry_policy=RetryPolicy.fixed(0, max_attempts=5))
    add_two(lb)
    seen: list[str] = []

    def fail(b: Backend) -> None:
        seen.append(b.id)
        raise Refused(b.id)

    try:
        with pytest.raises(Refused) as info:
            lb.execute(fail)
        assert sorted(seen) == ["n1", "n2"]          # each backend once, then stop
        assert str(info.value) == seen[-1]           # the last failure
        assert isinstance(info.value.__cause__, NoBackendAvailable)
        lb.flush_releases()
        stats = lb.get_statistics()
        assert stats.connections == 0
        assert sum(b.errors for b in stats.per_backend) == 2
    finally:
        lb.close()


def test_an_own_cause_is_kept(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None,
                      retry_policy=RetryPolicy.fixed(0, max_attempts=5))
    add_two(lb)

    def fail(b: Backend) -> None:
        raise Refused(b.id) from KeyError("mine")

    try:
        with pytest.raises(Refused) as info:
            lb.execute(fail)
        assert isinstance(info.value.__cause__, KeyError)
    finally:
        lb.close()


def test_retried_on_result_returns_the_last_result(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None,
                      retry_policy=RetryPolicy(backoff=Fixed(0), max_attempts=5,
                                               retry_on_result=lambda v: v != "good"))
    add_two(lb)
    seen: list[str] = []

    def bad(b: Backend) -> str:
        seen.append(b.id)
        return "bad " + b.id

    try:
        result = lb.execute(bad)
        assert result == "bad " + seen[-1]
        assert sorted(seen) == ["n1", "n2"]
    finally:
        lb.close()


def test_no_backend_at_all_still_says_so(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, breaker=None,
                      retry_policy=RetryPolicy.fixed(0, max_attempts=5))
    try:
        with pytest.raises(NoBackendAvailable):
            lb.execute(lambda b: None)
    finally:
        lb.close()
