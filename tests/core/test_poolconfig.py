"""Fleet-wide pool configuration without a server: parse, validation, and a pool driven by a
scripted store applying what the store holds (admission uses the stored limit)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from distlb._balancer import BreakerSettings, LoadBalancerCore
from distlb._core import poolconfig as pc
from distlb._shaping import Limit
from distlb.errors import ConfigError, StoreError
from distlb.strategies import Backend, Context, PeakEwmaBalancer, RoundRobinBalancer
from tests.clock import FakeClock
from tests.core.fake import ScriptedStore, bind
from tests.core.test_drive import pool_store


def stored(version: int, **fields: str) -> list[Any]:
    flat = [x for k, v in {"version": str(version), "updated_at_us": "1000000",
                           **fields}.items() for x in (k.encode(), v.encode())]
    return [str(version).encode(), 1, *flat]


def test_parse_get_replies() -> None:
    assert pc.parse_get([b"3", 0]) is None                      # unchanged
    s = pc.parse_get(stored(2, rate_limit="5 5"))
    assert s is not None and s.version == 2 and s.fields["rate_limit"] == "5 5"
    s = pc.parse_get([b"conflict", b"4", b"version", b"4"])
    assert s is not None and s.version == 4
    with pytest.raises(StoreError, match="not a hash"):
        pc.parse_get([b"wrongtype"])


def test_parse_assignments() -> None:
    assert pc.parse_assignments(["rate_limit=100/s", "breaker.failure_threshold=3",
                                 "strategy.decay_s=5", "client_limit=default"]) == {
        "rate_limit": "100/s", "breaker": {"failure_threshold": "3"},
        "strategy": {"decay_s": "5"}, "unset": ["client_limit"]}
    for bad in ("rate_limit", "=3", "colour=red"):
        with pytest.raises(ConfigError):
            pc.parse_assignments([bad])


def test_encode_changes_validates_with_the_constructors_ranges() -> None:
    pairs, removals = pc.encode_changes(strategy=RoundRobinBalancer(), rate_limit="10/s burst 2",
                                        client_limit=None, breaker={"failure_threshold": "3"},
                                        unset=["strategy.decay_s"])
    assert pairs == [("rate_limit", "10 2"), ("client_limit", "none"),
                     ("breaker.failure_threshold", "3")] and removals == ["strategy.decay_s"]
    # A strategy that has the parameter checks it with its own constructor.
    with pytest.raises(ConfigError, match="choices"):
        pc.encode_changes(strategy=PeakEwmaBalancer(), strategy_params={"choices": 99})
    with pytest.raises(ConfigError, match=r"breaker\.ttl_s"):
        pc.encode_changes(strategy=None, breaker={"open_timeout_s": 100, "ttl_s": 10})
    with pytest.raises(ConfigError, match="both set and unset"):
        pc.encode_changes(strategy=None, rate_limit=None, unset=["rate_limit"])


def test_a_pool_admits_with_the_stored_limit_and_breaker() -> None:
    clock = FakeClock()
    store = pool_store({"a": 0})
    store.answers["poolconfig"] = lambda call: stored(
        3, rate_limit="7 3", **{"breaker.failure_threshold": "2", "strategy.decay_s": "4"})
    lb = bind(LoadBalancerCore, store, clock, "pool", PeakEwmaBalancer(),
              rate_limit=Limit(100, 100), breaker=BreakerSettings(failure_threshold=50),
              subscribe=False)
    lb._new_breaker = lambda name, settings: _StubBreaker(settings)  # type: ignore[method-assign]
    lb._run(lb._select(None))
    assert lb.rate_limit == Limit(7, 3)
    assert lb.breaker_settings is not None and lb.breaker_settings.failure_threshold == 2
    assert lb.strategy.decay_s == 4                                # type: ignore[attr-defined]
    call = lb._acquire_call("a", "lease", Context(), True)
    assert call.args[0] == "admit" and "7.0 3.0" in call.args
    cfg = lb._fleet_config.current()
    assert cfg.version == 3 and "rate_limit" in cfg.stored


def test_an_unchanged_version_is_not_applied_again_and_events_mark_the_view_stale(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = pool_store({"a": 0})
    replies = iter([stored(1, rate_limit="7 3"), [b"1", 0]])
    store.answers["poolconfig"] = lambda call: next(replies)
    caplog.set_level(logging.WARNING, "distlb")
    lb = bind(LoadBalancerCore, store, clock, "pool", rate_limit=Limit(100, 100),
              breaker=None, subscribe=False, refresh_s=10)
    lb._run(lb._select(None))
    assert [c.args[1] for n, c, _ in store.calls if n == "poolconfig"] == [""]
    lb.rate_limit = Limit(1, 1)                   # not re-applied unless the version changes
    assert lb._fleet_config.on_event({"event": "config", "config_version": 1}) is False
    assert not lb._pool_view.stale                # the version in force: no news
    lb._on_event({"event": "config", "config_version": 2})
    assert lb._pool_view.stale
    lb._run(lb._select(None))
    tokens = [c.args[1] for n, c, _ in store.calls if n == "poolconfig"]
    assert tokens == ["", "1:1000000"] and lb.rate_limit == Limit(1, 1)
    assert sum("is in force" in m for m in caplog.messages) == 1
    assert lb._fleet_config.on_event({"event": "added", "version": "1.2"}) is None


def test_store_down_keeps_the_config_in_force() -> None:
    clock = FakeClock()
    store = pool_store({"a": 0})
    store.answers["poolconfig"] = lambda call: stored(1, rate_limit="7 3")
    lb = bind(LoadBalancerCore, store, clock, "pool", breaker=None, subscribe=False,
              refresh_s=0)
    lb._run(lb._select(None))
    store.down = True
    lb._run(lb._select(None))
    assert lb.rate_limit == Limit(7, 3)


class _StubBreaker:
    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.metrics_pool = None

    def add_listener(self, fn: Any) -> None:
        pass

    def _leave_bus(self) -> None:
        pass


def test_scripted_store_default_is_nothing_stored() -> None:
    store = ScriptedStore()
    assert pc.parse_get(store.answers["poolconfig"](None)) is not None


def test_strategies_declare_their_parameters_and_rebuild_what_depends_on_them() -> None:
    """``configure`` (what a pool's ``apply_config`` calls) checks each declared parameter's
    type and range, and a change rebuilds derived state at once."""
    from distlb.strategies import (
        AdaptiveBalancer,
        CostAwareBalancer,
        MaglevBalancer,
        Param,
    )
    from distlb.strategies.base import configure

    backends = tuple(Backend(f"n{i}") for i in range(4))
    keys = [f"k{i}" for i in range(300)]
    mag = MaglevBalancer(table_size=7)
    before = [mag.select_key(backends, k).id for k in keys]
    mag.configure(table_size=65537)
    fresh = MaglevBalancer(table_size=65537)
    assert [mag.select_key(backends, k).id for k in keys] == \
        [fresh.select_key(backends, k).id for k in keys] != before
    with pytest.raises(ConfigError, match=r"strategy\.table_size: must be a prime"):
        mag.configure(table_size=10)
    with pytest.raises(ConfigError,
                       match=r"strategy\.table_size: must be in \[7, 5000011\], got 3"):
        mag.configure(table_size=3)
    assert mag.table_size == 65537                 # a refused value changes nothing

    lat = AdaptiveBalancer(mode="latency_aware", decay_s=10)
    configure(lat, {"decay_s": 2.5})
    assert lat.decay_s == 2.5 and lat._peak is not None and lat._peak.decay_s == 2.5
    with pytest.raises(ConfigError, match="no configurable parameter 'vnodes'"):
        configure(lat, {"vnodes": 3})

    cost = CostAwareBalancer(probe_share=0.2)     # no objective: nothing to probe
    assert cost.probe_share == 0.0
    cost.configure(max_latency_ms=50.0)           # an objective: the probes asked for
    assert cost.probe_share == 0.2
    cost.configure(max_latency_ms=None)
    assert cost.probe_share == 0.0

    class Custom:                                  # any strategy may declare parameters
        config_params = (Param("spread", int, 1, 9),)
        spread = 1

        def select(self, backends: Any, ctx: Any = None) -> Backend:
            return backends[0]
    c = Custom()
    configure(c, {"spread": 4.0})
    assert c.spread == 4 and isinstance(c.spread, int)
    with pytest.raises(ConfigError, match=r"strategy\.spread: must be in \[1, 9\]"):
        configure(c, {"spread": 10})
    assert pc.strategy_value(c, "spread", "5", strict=True) == 5
    with pytest.raises(ConfigError, match="Custom has no configurable parameter 'x'"):
        pc.strategy_value(c, "x", "5", strict=True)
    assert pc.strategy_value(c, "x", "5", strict=False) == 5      # another process's


def test_a_pool_without_breakers_keeps_none_and_stored_strategy_values_apply() -> None:
    from distlb.strategies import ConsistentHashBalancer
    clock = FakeClock()
    store = pool_store({"a": 0})
    store.answers["poolconfig"] = lambda call: stored(
        1, **{"breaker.failure_threshold": "2", "strategy.vnodes": "3"})
    ring = ConsistentHashBalancer(vnodes=150)
    lb = bind(LoadBalancerCore, store, clock, "pool", ring, breaker=None,
              subscribe=False, refresh_s=10)
    lb._run(lb._select(Context(key="x")))
    assert lb.breaker_settings is None and lb._breaker_of("a") is None
    assert ring.vnodes == 3
    cfg = lb._fleet_config.current()
    assert cfg.stored == {"strategy.vnodes"} and dict(cfg.strategy) == {"vnodes": 3}
