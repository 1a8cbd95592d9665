"""Circuit breakers: ``CircuitBreaker`` and ``AdaptiveCircuitBreaker``, one per fleet.

Each method drives an operation of ``distlb._breaker`` on a sync redis-py
client. ``distlb.aio.breaker`` is generated from this file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from distlb import _breaker
from distlb._breaker import BreakerSettings
from distlb._shell import SyncShared
from distlb.errors import CircuitOpen
from distlb.results import Attempt, BreakerState, Transition

__all__ = ["AdaptiveCircuitBreaker", "BreakerGuard", "BreakerSettings", "CircuitBreaker",
           "Transition"]
F = TypeVar("F", bound=Callable[..., Any])


class _Shell(SyncShared, _breaker.BreakerBase):
    """The methods both breakers share."""

    def can_attempt(self) -> Attempt:
        """Whether a call may go to the backend now (no round trip while known closed)."""
        return self._run(self._attempt())

    def record_success(self, attempt: Attempt | None = None) -> None:
        """Report a successful call; pass its ``Attempt``. A half-open probe's result counts
        only with its permit (in its own half-open period), any other only in the closed
        period the ``Attempt`` names (``attempt.period``): a late result of a call admitted
        before a trip changes nothing, even after the breaker closed again. Without an
        ``Attempt`` the result counts in the current closed period."""
        self._run(self._record(False, attempt))

    def record_failure(self, attempt: Attempt | None = None) -> None:
        """Report a failed call; pass its ``Attempt``. A half-open probe's result counts
        only with its permit (in its own half-open period), any other only in the closed
        period the ``Attempt`` names (``attempt.period``): a late result of a call admitted
        before a trip changes nothing, even after the breaker closed again. Without an
        ``Attempt`` the result counts in the current closed period."""
        self._run(self._record(True, attempt))

    def state(self) -> BreakerState:
        """The shared state, read from the store."""
        return self._run(self._state())

    def reset(self) -> None:
        """Close the breaker and clear its counts and any forced state, for every process."""
        self._run(self._force(""))

    def force_open(self) -> None:
        """Refuse every call in every process until ``reset()``."""
        self._run(self._force("open"))

    def force_closed(self) -> None:
        """Let every call through in every process, whatever fails, until ``reset()``."""
        self._run(self._force("closed"))

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through the breaker; raises ``CircuitOpen`` when
        refused, and the call's own exception (after recording it) when it fails."""
        return self._run(self._call(fn, args, kwargs))

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator."""
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self._run(self._call(fn, args, kwargs))
        return wrapper  # type: ignore[return-value]

    def guard(self) -> BreakerGuard:
        """A context manager around one call: ``with breaker.guard():``."""
        return BreakerGuard(self)


class BreakerGuard:
    """Enter: ask the breaker (raise ``CircuitOpen`` if refused). Exit: record the outcome,
    classified by ``failure_on``, ``ignore`` and ``slow_call_s``."""

    def __init__(self, breaker: _Shell) -> None:
        self.breaker = breaker
        self.attempt: Attempt | None = None
        self.started = 0.0

    def __enter__(self) -> Attempt:
        attempt = self.breaker._run(self.breaker._attempt())
        if not attempt.allowed:
            raise CircuitOpen(self.breaker.name, attempt.state, attempt.retry_after_s)
        self.attempt = attempt
        self.started = self.breaker.clock()
        return attempt

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        verdict = self.breaker.classify(e, self.breaker.clock() - self.started)
        self.breaker._run(self.breaker._outcome(self.attempt, verdict))


class CircuitBreaker(_Shell, _breaker.CircuitBreakerCore):
    __doc__ = _breaker.CircuitBreakerCore.__doc__


class AdaptiveCircuitBreaker(_Shell, _breaker.AdaptiveCircuitBreakerCore):
    __doc__ = _breaker.AdaptiveCircuitBreakerCore.__doc__

    def record_result(self, success: bool, attempt: Attempt | None = None) -> None:
        """Count one call's outcome in the shared window ."""
        self._run(self._record(not success, attempt))
