"""The base of every shared primitive: name, keys, store failure policy, runner.

Subclasses say what ``kind`` of entity they are (the ``tb`` in
``distlb:{tb:api}``); the sync and asyncio shells set ``_runner``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from distlb import _keys
from distlb._core.ops import Call, Op
from distlb._runtime import AsyncRunner, GuardStats, StoreGuard, SyncRunner
from distlb._scripts import script
from distlb._validate import StorePolicy, number, store_policy

Clock = Callable[[], float]


class Shared:
    """A primitive whose state lives in the store under ``<prefix>:{<kind>:<name>}``.

    ``on_store_error`` says what happens while the store is unreachable (each
    primitive documents its three policies); the store is retried every
    ``retry_store_after_s`` seconds and the primitive resumes by itself.
    ``clock`` (seconds, monotonic) and ``sleep`` are injectable for tests; they
    only ever time local waiting, never shared state.
    """

    kind: ClassVar[str] = ""
    #: Set by the shells: SyncRunner (sync classes) or AsyncRunner (distlb.aio).
    _runner: ClassVar[type[SyncRunner] | type[AsyncRunner]]

    def __init__(self, client: Any, name: str, *, prefix: str = _keys.DEFAULT_PREFIX,
                 on_store_error: StorePolicy, retry_store_after_s: float = 1.0,
                 clock: Clock = time.monotonic,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.name = name
        self.prefix = _keys.check_prefix(prefix)
        self.key = _keys.entity(self.prefix, self.kind, _keys.escape(name, "name"))
        self.on_store_error = store_policy(on_store_error)
        retry = number("retry_store_after_s", retry_store_after_s, high=3600)
        self.clock = clock
        self.client = client
        self._guard = StoreGuard(f"{_keys.KINDS[self.kind]} {name!r}", retry, clock)
        runner = self._runner(client, self._guard) if sleep is None \
            else self._runner(client, self._guard, sleep=sleep)
        # Sync shells get results, asyncio shells awaitables: typed per shell (see pyproject).
        self._run: Callable[[Op[Any]], Any] = runner.drive

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self.name!r}, key={self.key!r})"

    @property
    def store_stats(self) -> GuardStats:
        """Calls, store errors, fallbacks and outages seen by this object."""
        return self._guard.stats

    def _delete(self, keys: Sequence[str]) -> Call[int]:
        return Call(script("delete"), tuple(keys), (), int, lambda: 0)
