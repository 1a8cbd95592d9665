"""AdaptiveBalancer's three modes (the seed's adaptive, predictive, latency-aware), one to one."""

from __future__ import annotations

import random
from typing import Any

import pytest

from distlb import AdaptiveBalancer, Backend, ConfigError, PeakEwmaBalancer, ScoringConfig
from distlb.strategies.adaptive import ADAPTIVE_MODES


def test_the_three_modes() -> None:
    assert ADAPTIVE_MODES == ("adaptive", "predictive", "latency_aware")
    assert AdaptiveBalancer().mode == "adaptive"
    assert AdaptiveBalancer(predictive=True).mode == "predictive"
    assert AdaptiveBalancer(mode="predictive").predictive
    assert AdaptiveBalancer(mode="latency-aware").mode == "latency_aware"
    assert not AdaptiveBalancer(mode="latency_aware").predictive


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mode": "fast"}, "mode"), ({"mode": 3}, "mode"),
    ({"mode": "adaptive", "predictive": True}, "predictive"),
    ({"mode": "latency_aware", "decay_s": 0}, "decay_s"),
])
def test_bad_modes(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        AdaptiveBalancer(**kwargs)
    assert err.value.field == field


def test_latency_aware_mode_is_peak_ewma() -> None:
    """Fed the same observations with the same seed and clock, the latency-aware mode
    picks exactly what PeakEwmaBalancer picks, and scores by its cost."""
    now = [0.0]
    mode = AdaptiveBalancer(mode="latency_aware", decay_s=5.0, rng=random.Random(9),
                            clock=lambda: now[0])
    peak = PeakEwmaBalancer(decay_s=5.0, rng=random.Random(9), clock=lambda: now[0])
    backends = tuple(Backend(f"b{i}", active_connections=i % 3) for i in range(6))
    feed = random.Random(3)
    for step in range(2000):
        now[0] = step * 0.01
        bid, latency = f"b{feed.randrange(6)}", feed.uniform(0.001, 0.2)
        mode.observe(bid, latency)
        peak.observe(bid, latency)
        assert mode.select(backends).id == peak.select(backends).id
    assert mode.scores(backends) == {b.id: peak.cost(b) for b in backends}


def test_latency_aware_mode_follows_a_swapped_clock() -> None:
    """Simulations swap ``clock`` after construction: the peak-EWMA decay follows it."""
    s = AdaptiveBalancer(mode="latency_aware", decay_s=1.0, rng=random.Random(1))
    now = [0.0]
    s.clock = lambda: now[0]
    s.observe("a", 1.0)                        # 1000 ms at t=0
    now[0] = 10.0                              # 10 time constants later
    s.observe("a", 0.001)
    assert s.scores([Backend("a"), Backend("b")])["a"] < 0.02   # decayed to ~1 ms / 100


def test_adaptive_and_latency_aware_differ_where_they_should() -> None:
    """The snapshot says b0 is fast, but every observed call on it was slow: the adaptive
    score trusts the snapshot, the latency-aware mode trusts what it measured."""
    backends = (Backend("b0", latency_ms=5.0), Backend("b1", latency_ms=50.0))
    adaptive = AdaptiveBalancer(ScoringConfig(1.0, 0.0, 0.0, 0.0), rng=random.Random(1))
    latency = AdaptiveBalancer(mode="latency_aware", rng=random.Random(1))
    for _ in range(5):
        for s in (adaptive, latency):
            s.observe("b0", 0.5)
            s.observe("b1", 0.05)
    assert {adaptive.select(backends).id for _ in range(20)} == {"b0"}
    assert {latency.select(backends).id for _ in range(20)} == {"b1"}
