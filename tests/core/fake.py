"""A scripted store for the core: the core's objects with a fake runner bound in.

``bind(CoreClass, store, ...)`` builds a core object (``TokenBucketCore``,
``LoadBalancerCore`` ...) whose ``_run`` drives operations against ``store``, a
:class:`ScriptedStore` that answers each script call from a function of the
call (or raises :class:`StoreDown`). The drive loop is the real ``SyncRunner``'s;
only the script call is answered by the store (each on its owner's guard, the failure
policy on an outage) and Sleep goes to the fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from distlb._core.guard import Command, StoreGuard
from distlb._core.ops import Call
from distlb._runtime import SyncRunner
from tests.clock import FakeClock

T = TypeVar("T")
Answer = Callable[[Call[Any]], Any]


class StoreDown(ConnectionError):
    """The store did not answer (what the real runner maps redis' ConnectionError to)."""


class ScriptedStore:
    """Answers script calls by script name; records every call with the guard it ran under."""

    def __init__(self, **answers: Answer) -> None:
        self.answers: dict[str, Answer] = dict(answers)
        # A pool reads its fleet-wide configuration at each refresh: none stored by default.
        self.answers.setdefault("poolconfig", lambda call: ["0", 1])
        self.calls: list[tuple[str, Call[Any], StoreGuard]] = []
        self.down = False

    def answer(self, call: Call[Any], guard: StoreGuard) -> Any:
        self.calls.append((call.script.name, call, guard))
        if self.down:
            raise StoreDown("scripted outage")
        return self.answers[call.script.name](call)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


class FakeRunner(SyncRunner):
    """``distlb._runtime.SyncRunner`` (its drive loop as is) with each script call answered
    by a :class:`ScriptedStore` instead of a client, and Sleep on the fake clock."""

    def __init__(self, guard: StoreGuard, store: ScriptedStore, clock: FakeClock) -> None:
        super().__init__(guard, sleep=clock.sleep)
        self.store = store

    def call(self, call: Call[T]) -> T:
        guard = call.owner or self.guard
        if guard.skip():
            return guard.fallback(call)
        try:
            reply = self.store.answer(call, guard)
        except StoreDown as exc:
            return guard.fallback(call, exc)
        guard.succeeded()
        return call.parse(reply)

    def command(self, cmd: Command[T]) -> T:
        raise AssertionError("plain commands are not scripted here")


C = TypeVar("C")


def bind(cls: type[C], store: ScriptedStore, clock: Any, *args: Any, **kwargs: Any) -> C:
    """An instance of the core class ``cls`` driven by ``store`` (no client, no bus)."""

    def _bind(self: Any, client: Any, sleep: Any) -> None:
        self.client = client
        self._guard.client = client
        self._run = FakeRunner(self._guard, store, clock).drive

    def _open_bus(self: Any) -> None:
        return None

    def _new_breaker(self: Any, name: str, settings: Any) -> Any:
        from distlb._breaker import CircuitBreakerCore
        return bind(CircuitBreakerCore, store, self.clock, name, settings=settings,
                    options=self.options)

    fake = type(f"Fake{cls.__name__}", (cls,), {"_bind": _bind, "_open_bus": _open_bus,
                                                 "_new_breaker": _new_breaker,
                                                 "__module__": __name__})
    if "options" not in kwargs:
        kwargs.setdefault("clock", clock)
    return fake(object(), *args, **kwargs)  # type: ignore[no-any-return]
