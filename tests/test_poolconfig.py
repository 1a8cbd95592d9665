"""Fleet-wide pool configuration (issue #13 item 4) against a real server: four processes
follow a change made from the command line; validation, compare-and-set, history bound,
NOSCRIPT, TTLs and hand-corrupted hashes."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from distlb import Backend, BreakerSettings, Limit, LoadBalancer
from distlb import admin as distlb_admin
from distlb.balancer import ConfigConflict
from distlb.cli import main as cli_main
from distlb.errors import CircuitOpen, ConfigError, StoreError
from distlb.strategies import NoBackendAvailable, PeakEwmaBalancer
from tests import config_workers

spawn = mp.get_context("spawn")


def cfg_key(prefix: str, pool: str = "p") -> str:
    return f"{prefix}:{{pool:{pool}}}:config"


def wait_for(cond: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)


def _fleet_then_cli(target: dict[str, Any], n: int,
                    worker: Callable[[int, Any, Any], tuple[Callable[..., None], tuple[Any, ...]]],
                    argv: list[str]) -> tuple[list[Any], list[Any], float]:
    """Start ``n`` worker processes (``worker(i, barrier, out)`` gives the target and its
    arguments), wait until each says it is ready, run the command line ``argv`` against
    ``target``, then collect each one's final report: (ready messages, final reports,
    the local time the command returned)."""
    barrier, out = spawn.Barrier(n), spawn.Queue()
    procs = [spawn.Process(target=fn, args=args)
             for fn, args in (worker(i, barrier, out) for i in range(n))]
    for p in procs:
        p.start()
    try:
        ready = [out.get(timeout=120) for _ in procs]
        url = target["url"] if "url" in target else \
            "redis://{}:{}/0".format(*target["cluster"][0])
        assert cli_main([*argv, "--redis-url", url]) == 0
        set_done = time.time()
        done = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    return ready, done, set_done


@pytest.mark.multiprocess
def test_four_processes_follow_a_change_made_from_the_cli(target: dict[str, Any]) -> None:
    prefix = f"cf{uuid.uuid4().hex[:8]}"
    refresh_s = 1.0
    from tests.workers import make_client
    admin = make_client(target)
    LoadBalancer(admin, "fleet", prefix=prefix).add_backend(Backend("b1", "127.0.0.1:9"))
    ready, done, set_done = _fleet_then_cli(
        target, 4, lambda i, barrier, out: (config_workers.follow_config,
                                            (target, prefix, i, refresh_s, 2.0, 3, barrier,
                                             out)),
        ["config", "set", "fleet", "rate_limit=2/s burst 2", "breaker.failure_threshold=3",
         "--prefix", prefix])
    assert sorted(m[1] for m in ready) == [0, 1, 2, 3]
    for _, wid, seen_at, denied, reads in done:
        assert seen_at is not None, f"worker {wid} never applied the configuration"
        assert denied, f"worker {wid} applied the limit but was never refused by it"
        # Within one refresh interval: every config read that left after the change
        # returned it (the first one applied it), and reads came every refresh_s.
        after = [v for sent, v in reads if sent > set_done]
        assert after and all(v == 1 for v in after), (wid, reads[-5:])
        before = [sent for sent, v in reads if v == 0]
        gaps = [b - a for a, b in itertools.pairwise(before)]
        assert len(before) >= 1 and all(v in (0, 1) for _, v in reads)
        print(f"worker {wid}: applied {seen_at - set_done:+.2f} s after the CLI returned; "
              f"{len(reads)} config reads, longest gap {max(gaps, default=0):.2f} s")
    cfg = LoadBalancer(admin, "fleet", prefix=prefix).config()
    assert cfg.version == 1 and cfg.rate_limit == Limit(2, 2)
    assert cfg.breaker is not None and cfg.breaker.failure_threshold == 3


@pytest.mark.multiprocess
def test_two_processes_rebuild_their_rings_when_vnodes_changes(target: dict[str, Any]) -> None:
    """``distlb config set ring strategy.vnodes=3``: both processes' rings are rebuilt with
    it at their first refresh after the change (no registry change needed), and answer a
    fixed key set exactly like a ring built with 3 virtual nodes."""
    from distlb import Context
    from distlb.strategies import ConsistentHashBalancer
    from tests.workers import make_client
    prefix = f"cv{uuid.uuid4().hex[:8]}"
    refresh_s = 1.0
    admin = make_client(target)
    ids = [f"n{i}" for i in range(5)]
    seed = LoadBalancer(admin, "ring", prefix=prefix)
    for bid in ids:
        seed.add_backend(Backend(bid, "127.0.0.1:9"))
    seed.close()
    backends = tuple(Backend(bid) for bid in ids)
    keys = [f"user{i}" for i in range(200)]
    old = [ConsistentHashBalancer(vnodes=150).select(backends, Context(key=k)).id for k in keys]
    new = [ConsistentHashBalancer(vnodes=3).select(backends, Context(key=k)).id for k in keys]
    assert old != new                  # the key set tells the two rings apart
    ready, done, set_done = _fleet_then_cli(
        target, 2, lambda i, barrier, out: (config_workers.follow_vnodes,
                                            (target, prefix, i, refresh_s, keys, new, barrier,
                                             out)),
        ["config", "set", "ring", "strategy.vnodes=3", "--prefix", prefix])
    assert all(m[2] == old for m in ready)           # both started on the 150-node ring
    for _, wid, seen_at, stale, vnodes, reads in done:
        assert vnodes == 3, (wid, vnodes)
        assert seen_at is not None, f"worker {wid}: the ring never answered like vnodes=3"
        assert stale == 0, f"worker {wid}: {stale} lookups used the old ring with vnodes=3"
        # within one refresh interval: every config read that left after the change
        # returned it (and the ring was rebuilt by the read that applied it)
        after = [v for sent, v in reads if sent > set_done]
        assert after and all(v == 1 for v in after), (wid, reads[-5:])


def test_no_config_stored_keeps_the_constructor_arguments(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "p", rate_limit=Limit(50, 5), prefix=prefix)
    cfg = lb.config()
    assert cfg.version == 0 and cfg.stored == frozenset()
    assert cfg.rate_limit == Limit(50, 5)
    assert not r.exists(cfg_key(prefix))          # reading never publishes this process's own
    lb.close()


def test_set_config_applies_here_and_by_event_elsewhere_and_warns_once(
        r: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    lb = LoadBalancer(r, "p", prefix=prefix)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    # refresh_s of an hour: only the pub/sub event can bring the change in time.
    other = LoadBalancer(r, "p", rate_limit=Limit(100, 100), refresh_s=3600, prefix=prefix)
    other.select_backend()
    wait_for(lambda: other._subscribed_since() is not None, "the subscription")
    caplog.set_level(logging.INFO, "distlb")
    new = lb.set_config(rate_limit="10/s burst 4", client_limit=Limit(1, 1), by="ops")
    assert new.version == 1 and lb.rate_limit == Limit(10, 4)
    assert new.stored == {"rate_limit", "client_limit"} and new.updated_by == "ops"

    def other_applied() -> bool:
        other.select_backend()
        return other.rate_limit == Limit(10, 4)
    wait_for(other_applied, "the other pool applied the change by its event")
    warnings = [m for m in caplog.messages if "is in force, not this process's" in m]
    assert any("rate_limit=10/s burst 4 (constructor: 100/s burst 100)" in m for m in warnings)
    lb.set_config(rate_limit="20/s")
    wait_for(lambda: (other.select_backend(), other.rate_limit)[1] == Limit(20, 20),
             "the second change")
    # ONE warning per pool object: the second change is logged at INFO only.
    assert len([m for m in caplog.messages if "is in force, not this process's" in m
                and "pool 'p'" in m]) == len(warnings)
    # Unset: the constructor argument is in force again.
    lb.set_config(unset=["rate_limit"])
    wait_for(lambda: (other.select_backend(), other.rate_limit)[1] == Limit(100, 100),
             "the unset")
    assert lb.rate_limit is None
    lb.close()
    other.close()


def test_bad_values_are_refused_before_the_store(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "p", prefix=prefix)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"rate_limit": "lots"}, "rate_limit"),
        ({"rate_limit": Limit(1, 1).__class__}, "rate_limit"),
        ({"client_limit": "0/s"}, "client_limit"),
        ({"breaker": {"failure_threshold": 0}}, "breaker.failure_threshold"),
        ({"breaker": {"open_timeout_s": -1}}, "breaker.open_timeout_s"),
        ({"breaker": {"half_open_max_requests": 10_001}}, "breaker.half_open_max_requests"),
        # contradicting each other: no process could apply them
        ({"breaker": {"success_threshold": 9, "half_open_max_requests": 5}},
         "breaker.half_open_max_requests"),
        ({"breaker": {"failure_on": 1}}, "breaker.failure_on"),
        ({"strategy": {"decay_s": "nan"}}, "strategy.decay_s"),
        ({"strategy": {"_rng": 1}}, "strategy._rng"),
        # the pool's own strategy (round robin) declares no parameter: refused at once
        ({"strategy": {"vnodes": 3}}, "strategy.vnodes"),
        ({"colour": "red"}, "colour"),
        ({}, "set_config"),
        ({"unset": ["version"]}, "unset"),
    ]
    for changes, field in bad:
        with pytest.raises(ConfigError) as info:
            lb.set_config(**changes)
        assert info.value.field == field, (changes, info.value)
    with pytest.raises(ConfigError, match="expected_version"):
        lb.set_config(rate_limit="1/s", expected_version=-1)
    with pytest.raises(ConfigError, match="history_max"):
        lb.set_config(rate_limit="1/s", history_max=0)
    assert not r.exists(cfg_key(prefix))
    # The command line refuses the same, before connecting (no server URL needed).
    assert cli_main(["config", "set", "p", "breaker.failure_threshold=zero",
                     "--redis-url", "redis://127.0.0.1:1/0"]) != 0
    assert cli_main(["config", "set", "p", "speed=3", "--redis-url",
                     "redis://127.0.0.1:1/0"]) == 2
    lb.close()


def test_compare_and_set(r: redis.Redis, prefix: str) -> None:
    a = LoadBalancer(r, "p", prefix=prefix)
    b = LoadBalancer(r, "p", prefix=prefix)
    assert a.set_config(rate_limit="5/s", expected_version=0).version == 1
    with pytest.raises(ConfigConflict) as info:
        b.set_config(rate_limit="7/s", expected_version=0)
    assert info.value.current.version == 1 and info.value.current.rate_limit == Limit(5, 5)
    assert b.rate_limit == Limit(5, 5)           # the conflict brought the stored one in
    assert r.hget(cfg_key(prefix), "rate_limit") == b"5 5"
    assert b.set_config(rate_limit="7/s", expected_version=1).version == 2
    a.close()
    b.close()


def test_history_is_bounded_and_says_who_and_when(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "p", prefix=prefix)
    before_us = int(r.time()[0]) * 1_000_000
    for i in range(1, 13):
        lb.set_config(rate_limit=f"{i}/s", history_max=5, by=f"op{i}")
    entries = lb.config_history(100)
    assert [e["version"] for e in entries] == [12, 11, 10, 9, 8]
    assert r.zcard(f"{cfg_key(prefix)}:history") == 5
    # As people write them (not the stored "12 12"); numbers are numbers.
    assert entries[0]["by"] == "op12" and entries[0]["set"] == {"rate_limit": "12/s burst 12"}
    assert entries[0]["previous"] == {"rate_limit": "11/s burst 11"}
    assert isinstance(entries[0]["at_us"], int) and entries[0]["at_us"] >= before_us
    assert isinstance(entries[0]["version"], int)
    first = distlb_admin.pool_config_history(r, "p", prefix=prefix, limit=100)[-1]
    assert first["version"] == 8 and first["previous"] == {"rate_limit": "7/s burst 7"}
    assert 0 < r.pttl(f"{cfg_key(prefix)}:history") <= 30 * 86400 * 1000
    assert 0 < r.pttl(cfg_key(prefix)) <= 30 * 86400 * 1000
    lb.close()


def test_noscript_reloads(r: redis.Redis, prefix: str) -> None:
    lb = LoadBalancer(r, "p", prefix=prefix)
    lb.set_config(rate_limit="3/s")
    r.script_flush()
    assert lb.config().rate_limit == Limit(3, 3)
    r.script_flush()
    assert lb.set_config(client_limit="1/s").version == 2
    r.script_flush()
    assert len(lb.config_history()) == 2
    lb.close()


def test_a_hand_corrupted_config_is_ignored_with_a_warning(
        r: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    key = cfg_key(prefix)
    r.hset(key, mapping={"version": "x", "rate_limit": "banana",
                         "client_limit": "4 2", "breaker.failure_threshold": "-3",
                         "breaker.open_timeout_s": "2", "strategy.decay_s": "7",
                         "strategy.no_such": "1", "colour": "red", "\xff": "1"})
    r.hset(key, b"bad\xff", b"\xfe")
    r.pexpire(key, 600_000)
    caplog.set_level(logging.WARNING, "distlb")
    lb = LoadBalancer(r, "p", rate_limit=Limit(9, 9), strategy=PeakEwmaBalancer(),
                      prefix=prefix)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    lb.select_backend()                           # the refresh reads and applies it
    assert lb.rate_limit == Limit(9, 9)           # "banana": ignored, constructor's in force
    assert lb.client_limit == Limit(4, 2)         # the good values still apply
    assert lb.breaker_settings is not None
    assert lb.breaker_settings.failure_threshold == 5
    assert lb.breaker_settings.open_timeout_s == 2
    assert lb.strategy.decay_s == 7               # type: ignore[attr-defined]
    text = "\n".join(caplog.messages)
    for word in ("'banana'", "breaker.failure_threshold", "no_such", "'colour'"):
        assert word in text, word
    # A version that is not a number reads as 0: compare-and-set still works from there.
    assert lb.set_config(rate_limit="1/s", expected_version=0).version == 1
    # Not a hash at all: the constructor's values stay, a warning, no exception.
    r.delete(key)
    r.set(key, "garbage", px=600_000)
    caplog.clear()
    other = LoadBalancer(r, "p", rate_limit=Limit(9, 9), prefix=prefix)
    other.select_backend()
    assert other.rate_limit == Limit(9, 9)
    assert any("not a hash" in m for m in caplog.messages)
    # A history that is not a zset: a write is refused whole (nothing half-written).
    r.delete(key)
    r.set(f"{key}:history", "garbage", px=600_000)
    with pytest.raises(StoreError, match="not a zset"):
        lb.set_config(rate_limit="2/s")
    assert not r.exists(key)
    with pytest.raises(StoreError, match="not a zset"):
        lb.config_history()
    lb.close()
    other.close()


def test_a_new_breaker_threshold_opens_the_backends_breaker(r: redis.Redis,
                                                             prefix: str) -> None:
    lb = LoadBalancer(r, "p", breaker=BreakerSettings(failure_threshold=100), prefix=prefix)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    lb.select_backend()
    assert lb.breaker_for("b1") is not None      # made with the old threshold

    def fail(b: Backend) -> None:
        raise OSError("down")
    lb.set_config(breaker={"failure_threshold": 2, "open_timeout_s": 60})
    cb = lb.breaker_for("b1")
    assert cb is not None and cb.failure_threshold == 2
    for _ in range(2):
        with pytest.raises(OSError):
            lb.execute(fail)
    assert cb.state().state == "open"
    with pytest.raises((CircuitOpen, NoBackendAvailable)):   # its only backend is open
        lb.execute(lambda b: None)
    lb.close()


def test_new_breaker_settings_retire_the_old_breakers_through_apply_config(
        r: redis.Redis, prefix: str) -> None:
    """The follower changes the pool only through ``apply_config``; the breakers it
    replaces are closed (they leave the event bus), not left subscribed until GC."""
    applied: list[Any] = []

    class Recording(LoadBalancer):
        def apply_config(self, values: Any) -> None:
            applied.append(values)
            super().apply_config(values)

    lb = Recording(r, "p", breaker=BreakerSettings(failure_threshold=100), prefix=prefix)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    lb.select_backend()
    old = lb.breaker_for("b1")
    assert old is not None
    old.can_attempt()                             # joins the bus (subscribe=True)
    assert old._bus is not None
    lb.set_config(rate_limit="50/s", breaker={"failure_threshold": 4})
    assert applied and applied[-1].rate_limit == Limit(50, 50)
    assert applied[-1].breaker.failure_threshold == 4
    assert old._bus is None                       # retired: closed, off the bus
    new = lb.breaker_for("b1")
    assert new is not None and new is not old and new.failure_threshold == 4
    lb.close()


def test_a_pool_without_breakers_ignores_stored_breaker_fields(
        r: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """``breaker=None`` is the code's choice: stored ``breaker.*`` fields tune breakers,
    they never switch them on (one WARNING says so); a pool with breakers applies them."""
    lb = LoadBalancer(r, "p", breaker=None, prefix=prefix)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    with caplog.at_level(logging.WARNING, logger="distlb"):
        cfg = lb.set_config(breaker={"failure_threshold": 1}, by="ops")
        lb.set_config(breaker={"failure_threshold": 2}, by="ops")
        lb.config()
    assert cfg.breaker is None and not any(f.startswith("breaker.") for f in cfg.stored)
    assert lb.breaker_for("b1") is None and lb.breaker_settings is None
    assert sum("built with breaker=None" in m for m in caplog.messages) == 1

    def fail(b: Backend) -> None:
        raise OSError("down")
    for _ in range(3):                            # never refused by a breaker
        with pytest.raises(OSError):
            lb.execute(fail)
    with_breakers = LoadBalancer(r, "p", prefix=prefix)
    assert with_breakers.config().breaker.failure_threshold == 2   # type: ignore[union-attr]
    lb.close()
    with_breakers.close()


def test_a_stored_strategy_parameter_rebuilds_the_ring_and_unset_restores_it(
        r: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    from distlb import Context
    from distlb.strategies import ConsistentHashBalancer
    ring = ConsistentHashBalancer(vnodes=150)
    lb = LoadBalancer(r, "p", ring, prefix=prefix)
    for i in range(5):
        lb.add_backend(Backend(f"n{i}", "127.0.0.1:9"))
    keys = [f"k{i}" for i in range(200)]

    def answers() -> list[str]:
        return [lb.select_backend(Context(key=k)).id for k in keys]

    def like(vnodes: int) -> list[str]:
        snap = tuple(Backend(f"n{i}") for i in range(5))
        return [ConsistentHashBalancer(vnodes=vnodes).select(snap, Context(key=k)).id
                for k in keys]
    assert answers() == like(150)
    lb.set_config(strategy={"vnodes": 3})
    assert ring.vnodes == 3 and answers() == like(3)
    assert [ring.lookup(k) for k in keys] == like(3)       # the fast path too
    lb.set_config(unset=["strategy.vnodes"])
    assert ring.vnodes == 150 and answers() == like(150)
    with pytest.raises(ConfigError, match="no configurable parameter 'decay_s'"):
        lb.set_config(strategy={"decay_s": 5})           # the writer's own strategy: refused
    # Stored without a pool (a built-in strategy's parameter): ignored here, with a warning.
    distlb_admin.set_pool_config(r, lb.name, prefix=prefix, strategy={"decay_s": 5})
    with caplog.at_level(logging.WARNING, logger="distlb"):
        assert "strategy.decay_s" not in lb.config().stored
    assert any("no configurable parameter 'decay_s'" in m for m in caplog.messages)
    lb.close()


def test_cli_get_and_history(server_url: str, prefix: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--redis-url", server_url, "--prefix", prefix]
    assert cli_main(["config", "get", "p", *base]) == 0
    assert "no configuration stored" in capsys.readouterr().out
    assert cli_main(["config", "set", "p", "rate_limit=none", "client_limit=5/s",
                     "strategy.decay_s=4", "--by", "me", *base]) == 0
    assert cli_main(["config", "set", "p", "client_limit=6/s", "--expect-version", "0",
                     *base]) == 2
    assert "version 1 is stored, not 0" in capsys.readouterr().err
    assert cli_main(["config", "get", "p", *base]) == 0
    out = capsys.readouterr().out
    assert "version 1, by me" in out and "5/s burst 5  (stored)" in out
    assert cli_main(["config", "history", "p", *base]) == 0
    assert "v1" in capsys.readouterr().out
    r = redis.Redis.from_url(server_url)
    assert r.hget(cfg_key(prefix), "strategy.decay_s") == b"4"
    r.close()


def test_reset_keeps_the_config_and_inspect_shows_it(server_url: str, prefix: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    r = redis.Redis.from_url(server_url)
    lb = LoadBalancer(r, "p", prefix=prefix)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    lb.set_config(rate_limit="6/s")
    base = ["--redis-url", server_url, "--prefix", prefix]
    assert cli_main(["inspect", *base]) == 0
    out = capsys.readouterr().out
    assert "config v1: rate_limit=6/s burst 6" in out and "1 config change in history" in out
    assert cli_main(["reset", "pool", "p", "--yes", *base]) == 0
    assert "kept its fleet-wide configuration" in capsys.readouterr().out
    assert r.hget(cfg_key(prefix), "rate_limit") == b"6 6"
    assert not r.exists(f"{prefix}:{{pool:p}}:backends")
    lb.close()
    r.close()


def test_a_decoding_client_reads_a_config_with_non_utf8_entries(server_url: str,
                                                                prefix: str) -> None:
    raw = redis.Redis.from_url(server_url)
    raw.hset(cfg_key(prefix), mapping={b"client_limit": b"4 2", b"bad\xff": b"1",
                                       b"rate_limit": b"\xfe"})
    raw.pexpire(cfg_key(prefix), 600_000)
    decoding = redis.Redis.from_url(server_url, decode_responses=True)
    lb = LoadBalancer(decoding, "p", rate_limit=Limit(9, 9), prefix=prefix, subscribe=False)
    cfg = lb.config()                       # the non-UTF-8 entries are left out, not fatal
    assert cfg.client_limit == Limit(4, 2) and cfg.rate_limit == Limit(9, 9)
    lb.set_config(rate_limit="3/s")         # the history's "previous" stays decodable
    assert lb.config_history()[0]["previous"] == {"rate_limit": "<not UTF-8>"}
    lb.close()
    decoding.close()
    raw.close()


# -- a new user's findings on the config CLI/API (cfgpolish) ----------------------------------


def _cli(server_url: str, prefix: str, *argv: str) -> list[str]:
    return [*argv, "--redis-url", server_url, "--prefix", prefix]


def test_history_json_is_json_only_with_numbers_and_nulls(
        server_url: str, prefix: str, r: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(_cli(server_url, prefix, "config", "set", "api", "rate_limit=200/s",
                         "--by", "ops")) == 0
    assert cli_main(_cli(server_url, prefix, "config", "set", "api", "rate_limit=300/s")) == 0
    capsys.readouterr()
    assert cli_main(_cli(server_url, prefix, "config", "history", "api", "--json")) == 0
    entries = json.loads(capsys.readouterr().out)     # the whole output: JSON only
    assert [e["version"] for e in entries] == [2, 1]
    assert all(isinstance(e["at_us"], int) for e in entries)
    assert entries[1]["previous"] == {"rate_limit": None}        # was not stored
    assert entries[1]["set"] == {"rate_limit": "200/s burst 200"}
    assert entries[0]["previous"] == {"rate_limit": "200/s burst 200"}
    # The text form, as people write limits.
    assert cli_main(_cli(server_url, prefix, "config", "history", "api")) == 0
    out = capsys.readouterr().out
    assert "by ops:  rate_limit=200/s burst 200" in out and "200 200" not in out
    # The raw history says null (not false) for "was not stored".
    raw = r.zrange(f"{cfg_key(prefix, 'api')}:history", 0, 0)
    assert json.loads(raw[0])["previous"] == {"rate_limit": None}


@pytest.mark.parametrize(("value", "wanted", "unwanted"), [
    ("rate_limit=10/s burst 0", ["rate_limit burst:", "[1e-09, 1e+12]", "'10/s burst 0'"],
     ["(got"]),
    ("client_limit=10/s; 100/h", ["client_limit:", "must be one rate, got 2"],
     ["parse_many"]),
    ("rate_limit=lots", ["rate_limit:", "'lots' is not a rate"], ["(got"]),
    ("breaker.failure_threshold=1.5", ["breaker.failure_threshold:", "[1, 1000000]", "1.5"],
     []),
    ("breaker.open_timeout_s=soon", ["breaker.open_timeout_s:", "'soon'"], []),
    ("strategy.1bad=5", ["strategy.1bad:"], []),
    # No strategy at hand: the built-in strategies that declare the name give its range;
    # a name none declares is refused (no process could apply it).
    ("strategy.vnodes=0", ["strategy.vnodes:", "[1, 10000]", "got 0"], []),
    ("strategy.vnodes=1.5", ["strategy.vnodes:", "an int in [1, 10000]"], []),
    ("strategy.table_size=8", ["strategy.table_size:", "must be a prime"], []),
    ("strategy.nonsense=1", ["strategy.nonsense:", "no built-in strategy has this parameter",
                             "vnodes"], []),
])
def test_cli_value_errors_name_the_part_and_its_range_once(
        value: str, wanted: list[str], unwanted: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before connecting: the URL names no server.
    assert cli_main(["config", "set", "api", value, "--redis-url",
                     "redis://127.0.0.1:1/0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    for w in wanted:
        assert w in err, (w, err)
    for u in unwanted:
        assert u not in err, (u, err)
    assert err.count("got") <= 1, err


def test_a_breaker_field_is_checked_alone_and_a_misfit_is_explained(
        server_url: str, prefix: str, r: redis.Redis, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    # success_threshold=9 is in its own range: stored, with a note that it does not fit
    # the default settings (half_open_max_requests 5), not an error blaming an unset field.
    assert cli_main(_cli(server_url, prefix, "config", "set", "api",
                         "breaker.success_threshold=9")) == 0
    err = capsys.readouterr().err
    assert "does not fit the default breaker settings" in err
    assert "set breaker.half_open_max_requests too" in err
    assert r.hget(cfg_key(prefix, "api"), "breaker.success_threshold") == b"9"
    # A process with the defaults ignores it, with a warning (the README's rule).
    lb = LoadBalancer(r, "api", prefix=prefix, subscribe=False)
    with caplog.at_level(logging.WARNING, logger="distlb"):
        cfg = lb.config()
    assert cfg.breaker is not None and cfg.breaker.success_threshold == 3
    assert "stored breaker settings ignored" in caplog.text
    # With both, it fits: the process applies them.
    assert cli_main(_cli(server_url, prefix, "config", "set", "api",
                         "breaker.half_open_max_requests=9")) == 0
    assert "does not fit" not in capsys.readouterr().err
    cfg = lb.config()
    assert cfg.breaker is not None and cfg.breaker.success_threshold == 9
    # Two fields that contradict each other are refused: no process could apply them.
    assert cli_main(_cli(server_url, prefix, "config", "set", "api",
                         "breaker.success_threshold=9", "breaker.half_open_max_requests=5")
                    ) == 2
    assert "no process can apply them" in capsys.readouterr().err
    lb.close()


def test_strategy_values_are_shown_and_checked_against_the_built_in_ones(
        server_url: str, prefix: str, r: redis.Redis, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.WARNING, logger="distlb"):
        assert cli_main(_cli(server_url, prefix, "config", "set", "api",
                             "strategy.decay_s=5")) == 0
        err = capsys.readouterr().err
        assert err.count("a process whose strategy does not declare one ignores it") == 1
        assert cli_main(_cli(server_url, prefix, "config", "get", "api")) == 0
        out = capsys.readouterr().out
        assert "strategy.decay_s" in out and "5  (stored)" in out
        assert cli_main(_cli(server_url, prefix, "config", "get", "api", "--json")) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["values"]["strategy.decay_s"] == "5" and "strategy.decay_s" in doc["stored"]
    # The command line has no strategy of its own: nothing about RoundRobinBalancer.
    assert "RoundRobinBalancer" not in caplog.text + err
    assert distlb_admin.pool_config(r, "api", prefix=prefix).strategy == {"decay_s": 5}


def test_set_on_a_pool_without_backends_notes_it(
        server_url: str, prefix: str, r: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(_cli(server_url, prefix, "config", "set", "nosuchpool",
                         "rate_limit=5/s")) == 0
    err = capsys.readouterr().err
    assert "pool 'nosuchpool' has no backends registered" in err
    assert r.hget(cfg_key(prefix, "nosuchpool"), "rate_limit") == b"5 5"   # still stored
    lb = LoadBalancer(r, "api", prefix=prefix, subscribe=False)
    lb.add_backend(Backend("b1", "127.0.0.1:9"))
    assert cli_main(_cli(server_url, prefix, "config", "set", "api", "rate_limit=5/s")) == 0
    assert "no backends" not in capsys.readouterr().err
    lb.close()


def test_config_usage_is_per_action(server_url: str, prefix: str, r: redis.Redis,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["config", "get"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "POOL" in err and "field=value" not in err
    for argv in (["config", "get", "api", "--by", "me"],
                 ["config", "history", "api", "--expect-version", "1"],
                 ["config", "get", "api", "rate_limit=1/s"]):
        with pytest.raises(SystemExit) as info:
            cli_main(argv)
        assert info.value.code == 2, argv
        capsys.readouterr()
    # A field given twice is refused (the last one silently winning hides a typo).
    assert cli_main(_cli(server_url, prefix, "config", "set", "api", "rate_limit=1/s",
                         "rate_limit=2/s", "--json")) == 2
    captured = capsys.readouterr()
    assert "rate_limit: is given twice" in captured.err and captured.out == ""
    assert not r.exists(cfg_key(prefix, "api"))


def test_unsetting_what_is_not_stored_writes_nothing(
        server_url: str, prefix: str, r: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    lb = LoadBalancer(r, "api", prefix=prefix, subscribe=False)
    assert lb.set_config(unset=["rate_limit"]).version == 0
    assert not r.exists(cfg_key(prefix, "api"))
    assert lb.set_config(client_limit="3/s").version == 1
    assert lb.set_config(unset=["rate_limit"]).version == 1        # not stored: no-op
    assert len(lb.config_history()) == 1
    assert cli_main(_cli(server_url, prefix, "config", "set", "api",
                         "rate_limit=default")) == 0
    assert "nothing to change" in capsys.readouterr().err
    assert distlb_admin.pool_config(r, "api", prefix=prefix).version == 1
    assert lb.set_config(unset=["client_limit"]).version == 2       # stored: removed
    assert len(lb.config_history()) == 2
    lb.close()


def test_the_writer_does_not_warn_about_its_own_choice(
        r: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    lb = LoadBalancer(r, "api", rate_limit=Limit(1000, 100), prefix=prefix,
                      breaker=BreakerSettings(failure_threshold=5), subscribe=False)
    with caplog.at_level(logging.WARNING, logger="distlb"):
        cfg = lb.set_config(rate_limit="200/s burst 20", breaker={"failure_threshold": 3},
                            by="ops", expected_version=0)
    assert cfg.version == 1 and lb.rate_limit == Limit(200, 20)
    assert "constructor arguments" not in caplog.text
    # Another process with other constructor arguments is told, once.
    other = LoadBalancer(r, "api", rate_limit=Limit(1000, 100), prefix=prefix,
                         subscribe=False)
    with caplog.at_level(logging.WARNING, logger="distlb"):
        other.config()
    assert caplog.text.count("constructor arguments") == 1
    # A value someone else stores still warns the first writer (it did not choose it).
    caplog.clear()
    other.set_config(client_limit="7/s")
    with caplog.at_level(logging.WARNING, logger="distlb"):
        lb.config()
    assert "client_limit=7/s burst 7" in caplog.text and "rate_limit=" not in caplog.text
    lb.close()
    other.close()


def test_admin_config_api_needs_no_load_balancer(r: redis.Redis, prefix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    assert distlb_admin.pool_config(r, "api", prefix=prefix).version == 0
    with caplog.at_level(logging.WARNING, logger="distlb"):
        cfg = distlb_admin.set_pool_config(r, "api", prefix=prefix, rate_limit="9/s",
                                           breaker={"failure_threshold": 2}, by="me",
                                           expected_version=0)
    assert caplog.text == ""
    assert cfg.version == 1 and cfg.rate_limit == Limit(9, 9) and cfg.updated_by == "me"
    assert cfg.breaker is not None and cfg.breaker.failure_threshold == 2
    assert cfg.stored == {"rate_limit", "breaker.failure_threshold"}
    with pytest.raises(ConfigConflict) as info:
        distlb_admin.set_pool_config(r, "api", prefix=prefix, rate_limit="1/s",
                                     expected_version=0)
    assert info.value.current.version == 1
    assert [e["by"] for e in distlb_admin.pool_config_history(r, "api", prefix=prefix)] == ["me"]
    lb = LoadBalancer(r, "api", prefix=prefix, subscribe=False)     # the pools see it
    assert lb.config().rate_limit == Limit(9, 9)
    lb.close()


def test_reset_of_a_pool_with_only_configuration_says_what_it_kept(
        server_url: str, prefix: str, r: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    distlb_admin.set_pool_config(r, "api", prefix=prefix, rate_limit="9/s")
    assert cli_main(_cli(server_url, prefix, "reset", "pool", "api", "--yes")) == 0
    out = capsys.readouterr().out
    assert "nothing to reset" in out and "kept: its fleet-wide configuration, 2 keys" in out
    assert "no keys" not in out


def test_watch_says_who_changed_which_fields(server_url: str, prefix: str,
                                             r: redis.Redis) -> None:
    import subprocess
    import sys
    proc = subprocess.Popen(
        [sys.executable, "-m", "distlb.cli", "watch", "--redis-url", server_url, "--prefix",
         prefix, "--count", "1", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        channel = distlb_admin.events_channel(prefix)
        while not r.pubsub_numsub(channel)[0][1]:             # subscribed
            assert time.monotonic() < deadline, "watch never subscribed"
            time.sleep(0.05)
        distlb_admin.set_pool_config(r, "api", prefix=prefix, rate_limit="9/s", by="ops",
                                     unset=["client_limit"])
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "pool api: configuration version 1 by ops: rate_limit, client_limit" in out, out
