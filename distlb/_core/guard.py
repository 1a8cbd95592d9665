"""The failure-policy bookkeeping of one primitive (pure: no I/O, driven by outcomes).

A :class:`StoreGuard` counts calls and store errors, says when to skip the store
(it failed moments ago and nothing says it is back) and applies the primitive's
failure policy (the call's ``fallback``). The runner reports outcomes to it; the
client's health (a prober, I/O, in ``distlb._runtime``) is seen only through the
:class:`Health` protocol: an epoch that moves when the store answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar

from distlb import _observe
from distlb.errors import StoreUnavailable

if TYPE_CHECKING:
    from distlb._core.ops import Call

log = logging.getLogger("distlb")
T = TypeVar("T")


class Health(Protocol):
    """What a guard needs of its client's health: ``epoch`` moves each time the store
    answered a probe; ``outage()`` asks for a prober to run."""

    epoch: int

    def outage(self) -> None: ...


def no_policy(what: str) -> Callable[[], NoReturn]:
    """The fallback of a call that has no failure policy (a configuration change or read):
    it raises StoreUnavailable, chained to the store error that led to it."""
    def fallback() -> NoReturn:
        raise StoreUnavailable(f"store unreachable: {what}")
    return fallback


@dataclass(frozen=True, slots=True)
class Command(Generic[T]):
    """One plain command (not a script) with no failure policy, e.g. ``HGETALL`` of a
    shared configuration hash: the shells drive it like an operation (``parse`` turns the
    raw reply into the result), and an outage raises StoreUnavailable, never a raw redis
    error."""

    args: tuple[Any, ...]
    what: str
    parse: Callable[[Any], T]


@dataclass
class GuardStats:
    """Counters of one primitive's store health, readable as ``obj.store_stats``."""

    calls: int = 0
    store_errors: int = 0
    fallbacks: int = 0
    outages: int = 0




class StoreGuard:
    """Tracks whether the store is reachable and applies the failure policy.

    After a failure the store is not tried again until it answers a probe of the
    client's health (``distlb._runtime.StoreHealth``, about 50 ms after the server is
    back), or at the latest after ``retry_store_after_s`` (so an outage costs one timeout, not one
    per request); success ends the outage. Outage start and end are logged at
    WARNING; every fallback is counted and logged at DEBUG.
    """

    def __init__(self, what: str, retry_store_after_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 health: Health | None = None, client: Any = None) -> None:
        self.what = what
        #: The client whose store this guard watches: a runner runs every call this guard
        #: owns on it (opaque here; the shells bind it).
        self.client = client
        self.retry_store_after_s = retry_store_after_s
        self.clock = clock
        self.health = health
        self.stats = GuardStats()
        self._down_until = 0.0
        self._down = False
        self._down_epoch = 0
        self._lock = threading.Lock()

    def skip(self) -> bool:
        """Whether to go straight to the failure policy (the store failed moments ago
        and has not answered a probe since)."""
        if not self._down or self.clock() >= self._down_until:
            return False
        return self.health is None or self.health.epoch == self._down_epoch

    def fallback(self, call: Call[T], exc: BaseException | None = None) -> T:
        if exc is not None:
            _observe.store_error(self.what)
        with self._lock:
            self.stats.fallbacks += 1
            if exc is not None:
                self.stats.store_errors += 1
                self._down_until = self.clock() + self.retry_store_after_s
                if self.health is not None:
                    self._down_epoch = self.health.epoch
                if not self._down:
                    self._down = True
                    self.stats.outages += 1
                    log.warning("store unreachable for %s (%s: %s); applying failure "
                                "policy until the store answers again", self.what,
                                type(exc).__name__, exc)
        if exc is not None and self.health is not None:
            self.health.outage()
        log.debug("fallback for %s", self.what)
        result = call.fallback()
        _observe.fallback(self.what, getattr(result, "source", "policy"))
        return result

    def succeeded(self) -> None:
        self.stats.calls += 1
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    log.warning("store reachable again for %s", self.what)
