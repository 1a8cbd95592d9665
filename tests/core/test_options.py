"""StoreOptions and BreakerSettings: defaults, the one validation, conflicts, one list.

No server: the primitives are core objects bound to a scripted store (``fake.bind``).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import typing
from typing import Any

import pytest

import distlb
import distlb.aio
from distlb._balancer import LoadBalancerCore
from distlb._breaker import (
    AdaptiveCircuitBreakerCore,
    BreakerKeywords,
    BreakerSettings,
    CircuitBreakerCore,
)
from distlb._retry import Fixed, RetryBudgetCore, RetryPolicyCore
from distlb._shaping import LeakyBucketCore, PriorityLimiterCore, TokenBucketCore, TrafficShaperCore
from distlb._shared import (
    Shared,
    StoreKeywords,
    StoreOptions,
    TimingKeywords,
    TimingOptions,
)
from distlb.errors import ConfigError
from tests.clock import FakeClock
from tests.core.fake import ScriptedStore, bind

STORE_FIELDS = [f.name for f in dataclasses.fields(StoreOptions)]
BREAKER_FIELDS = [f.name for f in dataclasses.fields(BreakerSettings)]

#: Every core class with a public constructor, and the arguments it needs.
PRIMITIVES: list[tuple[type[Shared], tuple[Any, ...], dict[str, Any]]] = [
    (TokenBucketCore, ("api",), {"rate_per_s": 1, "burst": 1}),
    (LeakyBucketCore, ("api",), {"rate_per_s": 1, "capacity": 1}),
    (TrafficShaperCore, ("api",), {}),
    (PriorityLimiterCore, ("api",), {"rate_per_s": 1, "burst": 1}),
    (RetryBudgetCore, ("api",), {}),
    (CircuitBreakerCore, ("api",), {}),
    (AdaptiveCircuitBreakerCore, ("api",), {}),
    (LoadBalancerCore, ("api",), {}),
]


def build(cls: type[Shared], *args: Any, **kwargs: Any) -> Any:
    return bind(cls, ScriptedStore(), FakeClock(), *args, **kwargs)


# -- StoreOptions --------------------------------------------------------------------------------


def test_defaults() -> None:
    o = StoreOptions()
    assert (o.prefix, o.on_store_error, o.retry_store_after_s, o.clock, o.sleep) == (
        "distlb", "fail_open", 1.0, time.monotonic, None)
    assert o.prefix == distlb.DEFAULT_PREFIX


@pytest.mark.parametrize("field, value, says", [
    ("prefix", "", "1-64 characters"),
    ("prefix", "a{b}", "no braces"),
    ("prefix", 7, "1-64 characters"),
    ("on_store_error", "fail", "fail_open, fail_closed, local"),
    ("on_store_error", None, "fail_open, fail_closed, local"),
    ("retry_store_after_s", 0, "(0, 3600]"),
    ("retry_store_after_s", 3601, "(0, 3600]"),
    ("retry_store_after_s", float("nan"), "(0, 3600]"),
    ("retry_store_after_s", "1", "must be a number"),
    ("clock", 3.0, "callable"),
    ("sleep", "no", "callable"),
])
def test_each_field_is_validated_naming_it(field: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        StoreOptions(**{field: value})
    assert e.value.field == field and says in str(e.value)


def test_frozen_and_replace_validates_again() -> None:
    o = StoreOptions(prefix="app", on_store_error="local")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.prefix = "other"  # type: ignore[misc]
    p = o.replace(retry_store_after_s=0.5)
    assert (p.prefix, p.on_store_error, p.retry_store_after_s) == ("app", "local", 0.5)
    assert o.retry_store_after_s == 1.0
    with pytest.raises(ConfigError, match="retry_store_after_s"):
        o.replace(retry_store_after_s=-1)


def test_keywords_build_the_options() -> None:
    clock = FakeClock()
    tb = bind(TokenBucketCore, ScriptedStore(), clock, "api", rate_per_s=1, burst=1,
              prefix="app", on_store_error="fail_closed", retry_store_after_s=2.5)
    assert tb.options == StoreOptions(prefix="app", on_store_error="fail_closed",
                                      retry_store_after_s=2.5, clock=clock)
    assert (tb.prefix, tb.on_store_error, tb.clock) == ("app", "fail_closed", clock)
    assert tb.key == "app:{tb:api}"
    assert tb._guard.retry_store_after_s == 2.5


@pytest.mark.parametrize("cls, args, kwargs", PRIMITIVES, ids=lambda p: getattr(p, "__name__", ""))
def test_every_primitive_takes_one_options_object(cls: type[Shared], args: tuple[Any, ...],
                                                   kwargs: dict[str, Any]) -> None:
    clock = FakeClock()
    opts = StoreOptions(prefix="shared", on_store_error="fail_closed",
                        retry_store_after_s=0.25, clock=clock)
    obj = build(cls, *args, options=opts, **kwargs)
    assert obj.options is opts
    assert obj.key.startswith("shared:{") and obj.on_store_error == "fail_closed"
    assert obj.clock is clock and obj._guard.retry_store_after_s == 0.25


@pytest.mark.parametrize("cls, args, kwargs", PRIMITIVES, ids=lambda p: getattr(p, "__name__", ""))
@pytest.mark.parametrize("field, value", [("prefix", "x"), ("on_store_error", "local"),
                                          ("retry_store_after_s", 2.0), ("sleep", None)])
def test_a_field_given_both_ways_is_a_config_error_naming_it(
        cls: type[Shared], args: tuple[Any, ...], kwargs: dict[str, Any],
        field: str, value: Any) -> None:
    # Even the same value, even None: there is no silent precedence between the two.
    with pytest.raises(ConfigError) as e:
        build(cls, *args, options=StoreOptions(clock=FakeClock()), **{field: value}, **kwargs)
    assert e.value.field == field and "options=" in str(e.value)


def test_options_must_be_store_options_and_keywords_must_exist() -> None:
    with pytest.raises(ConfigError) as e:
        build(TokenBucketCore, "api", rate_per_s=1, burst=1, options={"prefix": "x"})
    assert e.value.field == "options" and "StoreOptions" in str(e.value)
    with pytest.raises(TypeError, match="prefx"):
        build(TokenBucketCore, "api", rate_per_s=1, burst=1, prefx="x")


def test_invalid_keyword_is_refused_by_the_same_validation() -> None:
    with pytest.raises(ConfigError) as e:
        build(RetryBudgetCore, "rb", on_store_error="open")
    assert e.value.field == "on_store_error"


# -- one list ------------------------------------------------------------------------------------


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(obj, include_extras=False)


def test_the_keyword_lists_are_the_dataclass_fields() -> None:
    """The TypedDicts only type the keywords: same names, same types, as the dataclasses."""
    assert _hints(StoreKeywords) == _hints(StoreOptions)
    assert _hints(TimingKeywords) == _hints(TimingOptions)
    # The store options are the timing options plus the store fields: one clock, one sleep.
    assert set(_hints(TimingOptions)) < set(_hints(StoreOptions))
    assert issubclass(StoreOptions, TimingOptions)
    assert _hints(BreakerKeywords) == _hints(BreakerSettings)


PUBLIC = [distlb.TokenBucket, distlb.LeakyBucket, distlb.TrafficShaper, distlb.PriorityLimiter,
          distlb.RetryBudget, distlb.CircuitBreaker, distlb.AdaptiveCircuitBreaker,
          distlb.LoadBalancer, distlb.aio.TokenBucket, distlb.aio.LeakyBucket,
          distlb.aio.TrafficShaper, distlb.aio.PriorityLimiter, distlb.aio.RetryBudget,
          distlb.aio.CircuitBreaker, distlb.aio.AdaptiveCircuitBreaker, distlb.aio.LoadBalancer]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_no_constructor_repeats_the_store_or_breaker_fields(cls: type) -> None:
    params = inspect.signature(cls).parameters
    assert "options" in params and params["options"].default is None
    own = set(BREAKER_FIELDS) if "Breaker" in cls.__name__ else set()
    repeated = set(params) & (set(STORE_FIELDS) | own)
    assert not repeated, f"{cls.__name__} lists {repeated} itself: take them from **keywords"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_constructor_parameter_is_documented_on_the_public_class(cls: type) -> None:
    doc = inspect.getdoc(cls) or ""
    params = [n for n, p in inspect.signature(cls).parameters.items()
              if n not in ("client", "name") and p.kind is not inspect.Parameter.VAR_KEYWORD]
    missing = [n for n in params if f"``{n}``" not in doc]
    assert not missing, f"{cls.__name__}'s docstring does not document {missing}"


def test_store_options_is_exported_once() -> None:
    assert distlb.StoreOptions is distlb.aio.StoreOptions is StoreOptions
    assert distlb.TimingOptions is distlb.aio.TimingOptions is TimingOptions
    assert distlb.BreakerSettings is distlb.aio.BreakerSettings is BreakerSettings
    assert "StoreOptions" in distlb.__all__ and "StoreOptions" in distlb.aio.__all__


# -- BreakerSettings -----------------------------------------------------------------------------


def test_breaker_settings_defaults_and_normalised_fields() -> None:
    s = BreakerSettings()
    assert (s.failure_threshold, s.open_timeout_s, s.success_threshold,
            s.half_open_max_requests, s.probe_lease_s, s.failure_on, s.ignore, s.slow_call_s,
            s.max_staleness_s, s.subscribe, s.ttl_s) == (
        5, 30.0, 3, 5, 30.0, (Exception,), (), None, 1.0, True, 86400.0)


@pytest.mark.parametrize("field, value", [
    ("failure_threshold", 0), ("open_timeout_s", 0), ("success_threshold", 0),
    ("half_open_max_requests", 2), ("probe_lease_s", -1), ("failure_on", "oops"),
    ("ignore", (ValueError, 3)), ("slow_call_s", 0), ("max_staleness_s", -0.1),
    ("subscribe", 1), ("ttl_s", 10),
])
def test_breaker_settings_validated_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as e:
        BreakerSettings(**{field: value})
    assert e.value.field == field


def test_breaker_takes_settings_or_keywords_not_both() -> None:
    s = BreakerSettings(failure_threshold=2, open_timeout_s=5)
    cb = build(CircuitBreakerCore, "api", settings=s)
    assert cb.settings is s and cb.failure_threshold == 2 and cb.open_timeout_s == 5
    kw = build(CircuitBreakerCore, "api", failure_threshold=2, open_timeout_s=5, prefix="p")
    assert kw.settings == s and kw.prefix == "p"
    with pytest.raises(ConfigError) as e:
        build(CircuitBreakerCore, "api", settings=s, open_timeout_s=5)
    assert e.value.field == "open_timeout_s" and "settings=" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build(CircuitBreakerCore, "api", settings=object())
    assert e.value.field == "settings"


def test_adaptive_breaker_refuses_a_failure_threshold() -> None:
    ab = build(AdaptiveCircuitBreakerCore, "api", settings=BreakerSettings(open_timeout_s=3))
    assert ab.open_timeout_s == 3
    for kwargs in ({"failure_threshold": 7}, {"settings": BreakerSettings(failure_threshold=7)}):
        with pytest.raises(ConfigError) as e:
            build(AdaptiveCircuitBreakerCore, "api", **kwargs)
        assert e.value.field == "failure_threshold"


def test_the_pool_passes_its_settings_and_options_straight_through() -> None:
    settings = BreakerSettings(failure_threshold=2, slow_call_s=1.5, ttl_s=3600)
    opts = StoreOptions(prefix="pp", on_store_error="fail_closed", retry_store_after_s=0.3,
                        clock=FakeClock())
    pool = build(LoadBalancerCore, "pool", breaker=settings, options=opts)
    cb = pool._breaker_of("b1")
    assert cb.settings is settings and cb.options is opts
    assert cb.key.startswith("pp:{cb:pool") and cb.on_store_error == "fail_closed"
    polling = build(LoadBalancerCore, "pool", breaker=settings, options=opts, subscribe=False)
    pcb = polling._breaker_of("b1")
    assert pcb.settings == dataclasses.replace(settings, subscribe=False)
    assert pcb.subscribe is False


# -- RetryPolicy: local, timed by the same options ------------------------------------------------

POLICIES = [distlb.RetryPolicy, distlb.aio.RetryPolicy]
TIMING_FIELDS = [f.name for f in dataclasses.fields(TimingOptions)]


def test_timing_options_defaults_validation_and_keyword_only() -> None:
    t = TimingOptions()
    assert (t.clock, t.sleep) == (time.monotonic, None)
    for field, value in (("clock", 3.0), ("sleep", "no")):
        with pytest.raises(ConfigError) as e:
            TimingOptions(**{field: value})
        assert e.value.field == field and "callable" in str(e.value)
    with pytest.raises(TypeError):
        TimingOptions(time.monotonic)  # type: ignore[misc]
    clock = FakeClock()
    assert t.replace(clock=clock).clock is clock and t.clock is time.monotonic
    # A StoreOptions validates its timing fields with the same code, and replaces them too.
    with pytest.raises(ConfigError) as e:
        StoreOptions(prefix="app", clock=3.0)  # type: ignore[arg-type]
    assert e.value.field == "clock"
    assert StoreOptions(prefix="app").replace(clock=clock).prefix == "app"


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__module__)
def test_a_policy_takes_the_applications_store_options(cls: type[RetryPolicyCore]) -> None:
    clock = FakeClock()
    opts = StoreOptions(prefix="app", on_store_error="fail_closed", clock=clock,
                        sleep=clock.sleep)
    policy = cls(backoff=Fixed(1.0), options=opts)
    assert policy.options is opts
    assert policy.clock is clock and policy.sleep == clock.sleep
    # Builders keep it; with_clock/with_sleep change only the timing (the fields stay).
    other = FakeClock()
    moved = policy.with_max_attempts(5).with_clock(other)
    assert moved.options == opts.replace(clock=other) and moved.clock is other
    assert moved.max_attempts == 5 and policy.clock is clock
    assert policy.with_options(TimingOptions()).clock is time.monotonic


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__module__)
def test_a_policys_clock_and_sleep_keywords_build_its_options(cls: type[RetryPolicyCore]) -> None:
    clock = FakeClock()
    policy = cls(clock=clock, sleep=clock.sleep)
    assert policy.options == TimingOptions(clock=clock, sleep=clock.sleep)
    assert cls().options == TimingOptions()
    assert cls.fixed(1.0).with_sleep(clock.sleep).sleep == clock.sleep


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__module__)
def test_a_policys_timing_is_validated_once_and_given_once(cls: type[RetryPolicyCore]) -> None:
    with pytest.raises(ConfigError) as e:
        cls(clock=3.0)  # type: ignore[arg-type]
    assert e.value.field == "clock"
    with pytest.raises(ConfigError) as e:
        cls(options=TimingOptions(), sleep=None)
    assert e.value.field == "sleep" and "options=" in str(e.value)
    with pytest.raises(ConfigError) as e:
        cls(options={"clock": time.monotonic})  # type: ignore[arg-type]
    assert e.value.field == "options" and "TimingOptions" in str(e.value)
    with pytest.raises(TypeError, match="prefix"):
        cls(prefix="app")  # type: ignore[call-arg]   # a local policy has no store fields


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__module__)
def test_a_policy_lists_no_timing_field_itself_and_documents_its_parameters(
        cls: type[RetryPolicyCore]) -> None:
    params = inspect.signature(cls).parameters
    assert params["options"].default is None and not set(params) & set(TIMING_FIELDS)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    doc = inspect.getdoc(cls) or ""
    missing = [n for n, p in params.items()
               if p.kind is not inspect.Parameter.VAR_KEYWORD and f"``{n}``" not in doc]
    assert not missing, f"{cls.__name__}'s docstring does not document {missing}"


def test_a_policy_times_its_loop_on_the_options_clock() -> None:
    """The options' clock (not time.monotonic) measures ``max_total_s``, and the options' sleep
    is what the shell sleeps with."""
    clock = FakeClock(now=0.0)
    opts = StoreOptions(clock=clock, sleep=clock.sleep)
    calls: list[float] = []

    def fn() -> None:
        calls.append(clock.now)
        clock.now += 2.0            # each attempt takes 2 s on the fake clock
        raise ValueError("down")

    policy = distlb.RetryPolicy(backoff=Fixed(1.0), max_attempts=10, max_total_s=6.0,
                                options=opts)
    with pytest.raises(ValueError):
        policy.execute(fn)
    # 0: attempt (2 s), wait 1, attempt at 3 (2 s), wait 1 would end at 8 > 6: gave up.
    assert calls == [0.0, 3.0] and clock.slept == [1.0]
