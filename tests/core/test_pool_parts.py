"""The pool's registry, statistics and health units (``distlb/_pool/``) driven by hand,
without a server or a pool object: each is a small unit with a named interface."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from distlb._core import pool as pl
from distlb._core.guard import StoreGuard
from distlb._core.ops import Call, Done, Invoke, Outcome
from distlb._pool.health import HealthRound
from distlb._pool.registry import BackendExists, Registry, UnknownBackend
from distlb._pool.stats import summarize
from distlb._pool.view import PoolView
from distlb.errors import ConfigError, StoreError
from distlb.strategies import Backend


def record(healthy: bool = True, weight: int = 100) -> pl.Record:
    raw = pl.encode_record("10.0.0.1:80", weight, healthy, {})
    return pl.Record(raw, "10.0.0.1:80", weight, healthy, {}, 0)


def state(status: str, records: dict[str, pl.Record] | None = None) -> pl.PoolState:
    return pl.PoolState(status, "1.1", 0, records, {}, {} if records is not None else None)


class Planner:
    """Stands in for the pool's ``_plan``: records (op, args), answers from a script."""

    def __init__(self, view: PoolView, answers: list[pl.PoolState]) -> None:
        self.view, self.answers, self.sent = view, answers, []

    def __call__(self, op: str, args: list[Any]) -> Call[pl.PoolState]:
        self.sent.append((op, list(args)))
        return Call(None, (), (op, *args), lambda r: r, None, None)  # type: ignore[arg-type]

    def drive(self, gen: Generator[Any, Any, Any]) -> Any:
        reply: Any = None
        try:
            while True:
                gen.send(reply)
                answer = self.answers.pop(0)
                self.view.apply(answer, 0.0)          # what the pool's parse does
                reply = answer
        except StopIteration as stop:
            return stop.value


def test_patch_retries_a_conflict_then_gives_up_with_store_error() -> None:
    view = PoolView()
    view.apply(state("ok", {"a": record()}), 0.0)
    conflict = state("conflict", {"a": record(weight=7)})
    planner = Planner(view, [conflict, state("ok")])
    reg = Registry("p", view, planner)
    planner.drive(reg.set_weight("a", 50))
    ops = [op for op, _ in planner.sent]
    assert ops == ["patch", "patch"]
    # the second attempt was built from the record the conflict carried (weight 7 -> 50,
    # compared against the record stored now)
    assert planner.sent[1][1][2] == record(weight=7).raw
    assert '"weight":50' in planner.sent[1][1][1].replace(" ", "")

    # each conflict carries a record changed again (a busy registry)
    planner = Planner(view, [state("conflict", {"a": record(weight=w)}) for w in (1, 2, 3)])
    reg = Registry("p", view, planner)
    reg.patch_attempts = 3
    with pytest.raises(StoreError, match="changed concurrently 3 times"):
        planner.drive(reg.set_health("a", False))


def test_registry_errors_name_the_pool_and_validate_first() -> None:
    view = PoolView()
    planner = Planner(view, [state("exists")])
    reg = Registry("p", view, planner)
    with pytest.raises(BackendExists, match="'p' already has a backend 'a'"):
        planner.drive(reg.add(Backend("a", "10.0.0.1:80")))
    planner = Planner(view, [state("ok", {})])                  # snapshot: not there
    with pytest.raises(UnknownBackend, match="no \\(readable\\) backend 'zz'"):
        planner.drive(Registry("p", view, planner).set_weight("zz", 1))
    assert planner.sent == [("snapshot", [])]
    with pytest.raises(ConfigError, match="weight"):
        Registry("p", view, planner).set_weight("a", -1)
    with pytest.raises(ConfigError, match="healthy"):
        Registry("p", view, planner).set_health("a", "yes")  # type: ignore[arg-type]


def test_summarize_reports_what_the_view_holds() -> None:
    snap = (Backend("a", latency_ms=10.0, active_connections=2),
            Backend("b", healthy=False, latency_ms=99.0))
    s = summarize(snap, {"a:requests": 4.0, "a:errors": 1.0},
                  lambda bid: {"a": "open"}.get(bid, "closed"))
    assert (s.backends, s.healthy, s.connections) == (2, 1, 2)
    assert s.avg_response_ms == 10.0           # only backends that answered requests
    assert [(b.id, b.breaker, b.requests, b.errors) for b in s.per_backend] == [
        ("a", "open", 4, 1), ("b", "closed", 0, 0)]


def test_health_round_probes_only_when_elected_and_publishes_changes() -> None:
    snap = (Backend("a"), Backend("b", healthy=False))
    changes: list[tuple[str, bool]] = []

    def set_health(bid: str, healthy: bool) -> Generator[Any, Any, None]:
        changes.append((bid, healthy))
        yield from ()

    hr = HealthRound("distlb:{pool:p}", StoreGuard("pool p", 1.0), lambda: Done(None), lambda: snap,
                     set_health)
    assert hr.key == "distlb:{pool:p}:checker"

    def drive(elected: int, probe: dict[str, bool]) -> int:
        gen, reply = hr.run(lambda b: probe[b.id], 5.0), None
        try:
            while True:
                step = gen.send(reply)
                if isinstance(step, Invoke):
                    reply = Outcome(step.fn(*step.args), None, 0.0)
                elif isinstance(step, Call):
                    assert step.args == (hr.checker_id, 5000)
                    reply = elected
                else:
                    reply = None
        except StopIteration as stop:
            return int(stop.value)

    assert drive(0, {}) == 0 and changes == []          # another process is the checker
    assert drive(1, {"a": False, "b": True}) == 2
    assert changes == [("a", False), ("b", True)]
