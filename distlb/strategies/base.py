"""What every strategy shares: the backend snapshot, the request context, the protocol.

Strategies are pure and local: given a snapshot of backends and a request
context they pick one, with no I/O. Time and randomness are injected
(``clock``, ``rng``) so tests are deterministic.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from distlb.errors import ConfigError, DistlbError


class NoBackendAvailable(DistlbError):
    """Every backend is unhealthy (or excluded), or there are none."""


MAX_ID_CHARS = 128


def check_id(backend_id: object, field: str = "id") -> str:
    """A backend id: a non-empty str of at most 128 characters (it also names the
    backend's circuit breaker, ``<pool>/<id>``)."""
    if not isinstance(backend_id, str) or not backend_id:
        raise ConfigError(field, f"must be a non-empty str, got {backend_id!r:.40}")
    if len(backend_id) > MAX_ID_CHARS:
        raise ConfigError(field, f"must be at most {MAX_ID_CHARS} characters")
    return backend_id


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend as strategies see it: identity, weight, health and live statistics.

    ``latency_ms`` is a moving average, ``error_rate`` a fraction in [0, 1],
    ``throughput_per_s`` completed requests per second, ``active_connections``
    the fleet-wide count. ``added_at_s`` (on the strategy's clock) is when it
    joined or last recovered, for slow start. ``metadata`` is free-form (zone,
    version, ...), stored with the backend in the shared registry.
    """

    id: str
    address: str = ""
    weight: int = 100
    healthy: bool = True
    active_connections: int = 0
    latency_ms: float = 0.0
    error_rate: float = 0.0
    throughput_per_s: float = 0.0
    added_at_s: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_id(self.id)
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) \
                or not 0 <= self.weight <= 1_000_000:
            raise ConfigError("weight", f"must be an int in [0, 1000000], got {self.weight!r}")

    def with_(self, **changes: object) -> Backend:
        """A copy with some fields changed: ``b.with_(active_connections=3)``."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Context:
    """What a request tells the strategy: a hash key, a client, a priority.

    ``exclude`` holds backend ids not to pick (e.g. those already tried by a retry).
    """

    key: str | None = None
    client_id: str | None = None
    priority: int = 0
    exclude: frozenset[str] = frozenset()

    @classmethod
    def with_key(cls, key: str) -> Context:
        return cls(key=key)

    def with_priority(self, priority: int) -> Context:
        return replace(self, priority=priority)

    def with_client(self, client_id: str) -> Context:
        return replace(self, client_id=client_id)

    def excluding(self, *backend_ids: str) -> Context:
        return replace(self, exclude=self.exclude | frozenset(backend_ids))


@runtime_checkable
class Strategy(Protocol):
    """A backend-selection strategy. Implement ``select``; ``observe`` is optional."""

    def select(self, backends: Sequence[Backend], ctx: Context | None = None) -> Backend:
        """Pick one healthy backend, or raise ``NoBackendAvailable``."""
        ...


def candidates(backends: Sequence[Backend], ctx: Context | None) -> list[Backend]:
    """The healthy, non-excluded backends with a weight above zero."""
    exclude = ctx.exclude if ctx is not None else frozenset()
    out = [b for b in backends if b.healthy and b.weight > 0 and b.id not in exclude]
    if not out:
        raise NoBackendAvailable(f"no healthy backend among {len(backends)}")
    return out


class Base:
    """What the built-in strategies share: an injectable ``random.Random`` (ties,
    sampling) and clock, and the health filter, remembered for the last snapshot.

    Snapshots passed as tuples are immutable, so filtering the same tuple again
    is skipped: with 1000 backends the O(n) filter, not the pick, is the cost.
    """

    def __init__(self, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self._seen: tuple[Sequence[Backend] | None, list[Backend]] = (None, [])
        self._indexed: tuple[list[Backend] | None, dict[str, Backend]] = (None, {})

    def _candidates(self, backends: Sequence[Backend], ctx: Context | None) -> list[Backend]:
        if (ctx is not None and ctx.exclude) or not isinstance(backends, tuple):
            return candidates(backends, ctx)
        seen, pool = self._seen
        if seen is not backends:
            pool = candidates(backends, ctx)
            self._seen = (backends, pool)
        return pool

    def select_key(self, backends: Sequence[Backend], key: str) -> Backend:
        """``select(backends, Context(key=key))`` for the plain key case; the hashing
        strategies answer it without building a Context."""
        return self.select(backends, Context(key=key))  # type: ignore[attr-defined,no-any-return]

    def _by_id(self, pool: list[Backend]) -> dict[str, Backend]:
        """``{id: backend}`` for a filtered pool, kept while the pool is the same object."""
        seen, index = self._indexed
        if seen is not pool:
            index = {b.id: b for b in pool}
            self._indexed = (pool, index)
        return index
