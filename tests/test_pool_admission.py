"""Priority and bandwidth through the pool (issue #13 items 3 and 5), and
``update_backend_metadata``: one process on a real server (the fleet: test_pool_priority_mp)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from distlb import Backend, Limit, LoadBalancer, RateLimited, TrafficShaper
from distlb.errors import ConfigError
from distlb.strategies import Context


def pool(r: redis.Redis, prefix: str, **kw: Any) -> LoadBalancer:
    lb = LoadBalancer(r, "p", prefix=prefix, breaker=None, subscribe=False, **kw)
    for i in (1, 2):
        lb.add_backend(Backend(f"n{i}", f"10.0.0.{i}:80"))
    return lb


def echo(b: Backend) -> str:
    return b.id


def prio(r: redis.Redis, prefix: str) -> dict[str, str]:
    raw = r.hgetall(f"{prefix}:{{pool:p}}:prio")
    return {k.decode(): v.decode() for k, v in raw.items()}


def buckets(r: redis.Redis, prefix: str) -> dict[str, dict[bytes, bytes]]:
    out = {}
    for key in r.scan_iter(f"{prefix}:{{pool:p}}:rl*"):
        h = r.hgetall(key)
        out[key.decode()] = {k: v for k, v in h.items() if k in (b"tokens", b"rate", b"burst")}
    return out


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 10, 1.5, True, "5", None])
def test_priority_outside_0_to_9_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"priority.*\[0, 9\]"):
        Context(priority=bad)
    with pytest.raises(ConfigError, match="priority"):
        Context.with_key("u").with_priority(bad)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 2e12, "5", True])
def test_bytes_must_be_a_size(bad: Any) -> None:
    with pytest.raises(ConfigError, match="bytes"):
        Context().with_bytes(bad)


@pytest.mark.parametrize("kw", [{"priority_reserve": 1.5}, {"priority_reserve": -0.1},
                                {"priority_min_share": 0.2}, {"priority_window_s": 0},
                                {"client_bandwidth": (1, 2)}, {"backend_bandwidth": 5}])
def test_pool_admission_settings_are_validated(r: redis.Redis, prefix: str,
                                               kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kw))):
        LoadBalancer(r, "p", prefix=prefix, **kw)


def test_a_request_larger_than_a_bandwidth_burst_is_a_config_error(r: redis.Redis,
                                                                   prefix: str) -> None:
    lb = pool(r, prefix, backend_bandwidth=Limit(1000, 500))
    with pytest.raises(ConfigError, match=r"bytes.*backend_bandwidth burst"):
        lb.execute(echo, ctx=Context().with_bytes(501))
    lb.close()


# -- priority -----------------------------------------------------------------------------------


def test_a_higher_priority_is_admitted_where_a_lower_one_is_shed(r: redis.Redis,
                                                                 prefix: str) -> None:
    # Burst 10, refill negligible during the test; reserve 0.9 x 10 x (9 - p) / 9.
    lb = pool(r, prefix, rate_limit=Limit(0.001, 10), priority_reserve=0.9,
              priority_min_share=0.0)
    high, low = Context(priority=9), Context(priority=0)
    lb.execute(echo, ctx=high)                   # level 9 asks: the reserve is held for it
    admitted_low = 0
    for _ in range(10):
        try:
            lb.execute(echo, ctx=low)
            admitted_low += 1
        except RateLimited as exc:
            assert "pool" in exc.reason
            break
    # Level 0 may use the bucket only down to 1 + 9 tokens: none of the 9 left.
    assert admitted_low == 0
    admitted_high = 0
    for _ in range(20):
        try:
            lb.execute(echo, ctx=high)
            admitted_high += 1
        except RateLimited:
            break
    assert admitted_high == 9                    # the rest of the burst, all to level 9
    c = prio(r, prefix)
    assert c["9:admitted"] == "10" and c["0:denied"] == "1" and c["0:shed"] == "1"
    assert c["top"] == "9" and "0:admitted" not in c
    assert r.ttl(f"{prefix}:{{pool:p}}:prio") > 0
    lb.close()


def test_without_a_higher_level_asking_the_lowest_has_the_whole_burst(r: redis.Redis,
                                                                      prefix: str) -> None:
    lb = pool(r, prefix, rate_limit=Limit(0.001, 5))
    for _ in range(5):
        lb.execute(echo)                          # priority 0, the default: as before
    with pytest.raises(RateLimited):
        lb.execute(echo)
    lb.close()


def flood(lb: LoadBalancer, seconds: float, stop_at_low: int) -> tuple[int, int]:
    """Level 9 asks three times for each time level 0 asks, for ``seconds`` or until level 0
    was admitted ``stop_at_low`` times: (admitted at 9, admitted at 0)."""
    import time
    high = low = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and low < stop_at_low:
        for p in (9, 9, 9, 0):
            try:
                lb.execute(echo, ctx=Context(priority=p))
                high += p == 9
                low += p == 0
            except RateLimited:
                pass
    return high, low


@pytest.mark.parametrize("min_share", [0.1, 0.0])
def test_aging_lets_a_starved_level_in(r: redis.Redis, prefix: str, min_share: float) -> None:
    # 20/s, burst 100: level 0's reserve is the whole burst but one token, which level 9
    # (taking every token) never leaves; aging lets it in once per 1 / (0.1 x 20) = 0.5 s.
    lb = pool(r, prefix, rate_limit=Limit(20, 100), priority_reserve=1.0,
              priority_min_share=min_share)
    while True:                                   # level 9 drains the burst
        try:
            lb.execute(echo, ctx=Context(priority=9))
        except RateLimited:
            break
    if min_share:
        high, low = flood(lb, 60, stop_at_low=3)
        assert low == 3 and high > low
    else:                                         # strict priority: level 0 gets nothing
        high, low = flood(lb, 1.5, stop_at_low=1)
        assert low == 0 and high > 0
    assert int(prio(r, prefix).get("0:admitted", "0")) == low
    lb.close()


# -- bandwidth ----------------------------------------------------------------------------------


def test_bytes_are_charged_against_the_chosen_backend_and_the_client(r: redis.Redis,
                                                                     prefix: str) -> None:
    lb = pool(r, prefix, client_bandwidth=Limit(0.001, 1000),
              backend_bandwidth=Limit(0.001, 600))
    chosen = lb.execute(echo, ctx=Context(client_id="c1").with_bytes(400))
    b = buckets(r, prefix)
    bb = b[f"{prefix}:{{pool:p}}:rl:bb:{chosen}"]
    cb = b[f"{prefix}:{{pool:p}}:rl:cb:c1"]
    assert float(bb[b"tokens"]) == pytest.approx(200, abs=0.01)
    assert float(cb[b"tokens"]) == pytest.approx(600, abs=0.01)
    assert not any(k.endswith(":rl:bb:" + ("n2" if chosen == "n1" else "n1")) for k in b)
    for key in b:
        assert r.ttl(key) > 0
    lb.close()


def test_a_denied_call_leaves_every_bucket_unchanged(r: redis.Redis, prefix: str) -> None:
    lb = pool(r, prefix, rate_limit=Limit(0.001, 10), client_limit=Limit(0.001, 10),
              client_bandwidth=Limit(0.001, 1000), backend_bandwidth=Limit(0.001, 1000))
    ctx = Context(client_id="c1").with_bytes(700)
    lb.execute(echo, ctx=ctx)
    lb.execute(echo, ctx=ctx.with_bytes(10))
    before = buckets(r, prefix)
    assert len(before) == 5                       # rl, rl:c:c1, rl:cb:c1, two rl:bb
    conns = r.hgetall(f"{prefix}:{{pool:p}}:conns")
    with pytest.raises(RateLimited) as exc:
        lb.execute(echo, ctx=ctx)                 # the client has 290 bytes left
    assert exc.value.reason == "client_bandwidth:c1"
    after = buckets(r, prefix)
    for key, h in before.items():                 # tokens as they were (refill ~1e-6/s)
        assert float(after[key][b"tokens"]) == pytest.approx(float(h[b"tokens"]), abs=1e-3)
    assert r.hgetall(f"{prefix}:{{pool:p}}:conns") == conns
    assert prio(r, prefix)["0:denied"] == "1"
    lb.close()


def test_a_retry_is_charged_against_the_next_backend_only(r: redis.Redis, prefix: str) -> None:
    from distlb import RetryPolicy
    lb = pool(r, prefix, rate_limit=Limit(0.001, 10), client_bandwidth=Limit(0.001, 1000),
              backend_bandwidth=Limit(0.001, 1000),
              retry_policy=RetryPolicy.exponential_with_jitter(base_s=0.001, max_attempts=2))
    seen: list[str] = []

    def fail_first(b: Backend) -> str:
        seen.append(b.id)
        if len(seen) == 1:
            raise ConnectionError("first attempt fails")
        return b.id

    lb.execute(fail_first, ctx=Context(client_id="c1").with_bytes(100))
    assert len(set(seen)) == 2
    b = buckets(r, prefix)
    for bid in seen:                              # each backend carried the bytes once
        assert float(b[f"{prefix}:{{pool:p}}:rl:bb:{bid}"][b"tokens"]) == \
            pytest.approx(900, abs=0.01)
    assert float(b[f"{prefix}:{{pool:p}}:rl:cb:c1"][b"tokens"]) == pytest.approx(900, abs=0.01)
    assert float(b[f"{prefix}:{{pool:p}}:rl"][b"tokens"]) == pytest.approx(9, abs=0.01)
    lb.close()


def test_the_traffic_shaper_is_charged_with_the_requests_bytes_and_client(
        r: redis.Redis, prefix: str) -> None:
    shaper = TrafficShaper(r, "edge", client_bandwidth=Limit(0.001, 1000), prefix=prefix)
    lb = pool(r, prefix, traffic_shaper=shaper)
    lb.execute(echo, ctx=Context(client_id="c1").with_bytes(800))
    with pytest.raises(RateLimited, match="client_bandwidth:c1"):
        lb.execute(echo, ctx=Context(client_id="c1").with_bytes(300))
    lb.close()


def test_inspect_shows_the_per_level_counters_and_bandwidth_buckets(server_url: str,
                                                                    prefix: str) -> None:
    from tests.test_cli import inspect_json
    r = redis.Redis.from_url(server_url)
    lb = pool(r, prefix, rate_limit=Limit(0.001, 2), backend_bandwidth=Limit(0.001, 100))
    ctx = Context(priority=7).with_bytes(10)
    lb.execute(echo, ctx=ctx)
    lb.execute(echo, ctx=ctx)
    with pytest.raises(RateLimited):
        lb.execute(echo, ctx=ctx)
    lb.close()
    doc = inspect_json(server_url, prefix)
    summary = {(e["kind"], e["name"]): e for e in doc["entities"]}[("pool", "p")]["summary"]
    assert "priority admitted/denied 7: 2/1" in summary
    assert "backend bandwidth n" in summary
