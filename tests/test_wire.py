"""Issue #12 item 1: a sync script call on a plain ``redis.Redis`` skips redis-py's command
path (one pooled connection, the command packed once per call object), and keeps its
behaviour: NOSCRIPT, a stale connection, script errors, clients that must keep
``client.evalsha``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from redis.connection import Connection

from distlb import LeakyBucket, TokenBucket, TrafficShaper
from distlb._scripts import direct_pool
from distlb.errors import StoreError

pytestmark = pytest.mark.lua


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every command object a sync connection wrote, in order."""
    seen: list[Any] = []
    real = Connection.send_packed_command

    def recording(self: Connection, command: Any, check_health: bool = True) -> None:
        seen.append(command)
        real(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", recording)
    yield seen


def test_repeated_decisions_send_the_same_packed_command(server_url: str, prefix: str,
                                                         sent: list[Any]) -> None:
    c = redis.Redis.from_url(server_url)
    try:
        tb = TokenBucket(c, "tb", rate_per_s=0.001, burst=3, prefix=prefix)
        lk = LeakyBucket(c, "lk", rate_per_s=1000, capacity=10, prefix=prefix)
        gs = TrafficShaper.with_global_limit(c, 0.001, 3, name="gs", prefix=prefix)
        for obj in (tb, lk, gs):
            obj.try_acquire()  # connects, loads the script (NOSCRIPT -> EVAL)
            sent.clear()
            first, second = obj.try_acquire(), obj.try_acquire()
            assert first.allowed and second.allowed and second.source == "store"
            # packed once: the very same bytes object leaves twice, one write per decision
            # (the recording sees every connection of the process: a PING is a StoreHealth
            # prober, e.g. one an earlier test's outage started, and says nothing here)
            calls = [c for c in sent if c[0] != b"*1\r\n$4\r\nPING\r\n"]
            assert len(calls) == 2 and len(calls[0]) == len(calls[1]) == 1, (obj, sent)
            assert calls[0][0] is calls[1][0], obj
        assert tb.try_acquire().allowed is False  # the third token of a 3-burst was the last
        assert [d.remaining for d in (tb.peek(),)] == [pytest.approx(0, abs=0.01)]
    finally:
        c.close()


def _flush_scripts(r: redis.Redis, c: redis.Redis) -> None:
    r.script_flush()                                      # the next EVALSHA meets NOSCRIPT


def _kill_connection(r: redis.Redis, c: redis.Redis) -> None:
    assert r.client_kill_filter(_id=c.client_id()) == 1   # the one pooled connection


@pytest.mark.parametrize("disrupt", [_flush_scripts, _kill_connection],
                         ids=["noscript-reloads-through-eval",
                              "killed-connection-retried-like-redis-py"])
def test_a_lost_script_or_connection_costs_no_decision(
        r: redis.Redis, server_url: str, prefix: str,
        disrupt: Callable[[redis.Redis, redis.Redis], None]) -> None:
    """After a SCRIPT FLUSH (NOSCRIPT -> EVAL) or a killed pooled connection (retried as
    redis-py does) the next decision still comes from the store: no fallback, no error."""
    c = redis.Redis.from_url(server_url)
    try:
        tb = TokenBucket(c, "tb", rate_per_s=0.001, burst=5, prefix=prefix)
        assert tb.try_acquire().allowed
        disrupt(r, c)
        d = tb.try_acquire()
        assert d.allowed and d.source == "store" and d.remaining == pytest.approx(3, abs=0.01)
        assert tb.store_stats.fallbacks == 0 and tb.store_stats.store_errors == 0
    finally:
        c.close()


def test_a_script_error_raises_and_the_connection_stays_usable(r: redis.Redis, server_url: str,
                                                                prefix: str) -> None:
    c = redis.Redis.from_url(server_url)
    try:
        tb = TokenBucket(c, "tb", rate_per_s=0.001, burst=5, prefix=prefix)
        r.set(tb.key, "not a hash", ex=60)
        with pytest.raises(StoreError):
            tb.try_acquire()
        ok = TokenBucket(c, "ok", rate_per_s=0.001, burst=5, prefix=prefix)
        assert ok.try_acquire().source == "store"
        assert c.connection_pool._created_connections == 1  # type: ignore[attr-defined]
    finally:
        c.close()


class Recording(redis.Redis):
    def evalsha(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.seen = getattr(self, "seen", 0) + 1
        return super().evalsha(*args, **kwargs)


def test_clients_that_change_the_command_path_keep_evalsha(server_url: str,
                                                           prefix: str) -> None:
    plain = redis.Redis.from_url(server_url)
    single = redis.Redis.from_url(server_url, single_connection_client=True)
    sub = Recording.from_url(server_url)
    custom = redis.Redis.from_url(server_url)
    custom.set_response_callback("EVALSHA", lambda reply, **_: reply)
    try:
        assert direct_pool(plain) is plain.connection_pool
        for c in (single, sub, custom, fakeredis.FakeRedis()):
            assert direct_pool(c) is None, c
        tb = TokenBucket(sub, "tb", rate_per_s=0.001, burst=5, prefix=prefix)
        assert tb.try_acquire().allowed and tb.try_acquire().allowed
        assert sub.seen == 2
    finally:
        for c in (plain, single, sub, custom):
            c.close()
