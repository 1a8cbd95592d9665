"""Asyncio twin of ``distlb.breaker``: the same classes and methods, awaited.

Use a ``redis.asyncio`` client. Concurrent calls from many tasks are coalesced
into pipelines: one round trip carries many decisions, each still its own
atomic script.

GENERATED from distlb/breaker.py by tools/gen_aio.py: do not edit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from distlb import _breaker
from distlb._breaker import BreakerSettings
from distlb._shell import AsyncShared
from distlb.errors import CircuitOpen
from distlb.results import Attempt, BreakerState, Transition

__all__ = ["AdaptiveCircuitBreaker", "BreakerGuard", "BreakerSettings", "CircuitBreaker",
           "Transition"]
F = TypeVar("F", bound=Callable[..., Any])


class _Shell(AsyncShared, _breaker.BreakerBase):
    """The methods both breakers share."""

    async def can_attempt(self) -> Attempt:
        """Whether a call may go to the backend now (no round trip while known closed)."""
        return await self._run(self._attempt())

    async def record_success(self, attempt: Attempt | None = None) -> None:
        """Report a successful call; pass its ``Attempt``. A half-open probe's result counts
        only with its permit (in its own half-open period), any other only in the closed
        period the ``Attempt`` names (``attempt.period``): a late result of a call admitted
        before a trip changes nothing, even after the breaker closed again. Without an
        ``Attempt`` the result counts in the current closed period."""
        await self._run(self._record(False, attempt))

    async def record_failure(self, attempt: Attempt | None = None) -> None:
        """Report a failed call; pass its ``Attempt``. A half-open probe's result counts
        only with its permit (in its own half-open period), any other only in the closed
        period the ``Attempt`` names (``attempt.period``): a late result of a call admitted
        before a trip changes nothing, even after the breaker closed again. Without an
        ``Attempt`` the result counts in the current closed period."""
        await self._run(self._record(True, attempt))

    async def state(self) -> BreakerState:
        """The shared state, read from the store."""
        return await self._run(self._state())

    async def reset(self) -> None:
        """Close the breaker and clear its counts and any forced state, for every process."""
        await self._run(self._force(""))

    async def force_open(self) -> None:
        """Refuse every call in every process until ``reset()``."""
        await self._run(self._force("open"))

    async def force_closed(self) -> None:
        """Let every call through in every process, whatever fails, until ``reset()``."""
        await self._run(self._force("closed"))

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through the breaker; raises ``CircuitOpen`` when
        refused, and the call's own exception (after recording it) when it fails."""
        return await self._run(self._call(fn, args, kwargs))

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator."""
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self._run(self._call(fn, args, kwargs))
        return wrapper  # type: ignore[return-value]

    def guard(self) -> BreakerGuard:
        """A context manager around one call: ``async with breaker.guard():``."""
        return BreakerGuard(self)


class BreakerGuard:
    """Enter: ask the breaker (raise ``CircuitOpen`` if refused). Exit: record the outcome,
    classified by ``failure_on``, ``ignore`` and ``slow_call_s``."""

    def __init__(self, breaker: _Shell) -> None:
        self.breaker = breaker
        self.attempt: Attempt | None = None
        self.started = 0.0

    async def __aenter__(self) -> Attempt:
        attempt = await self.breaker._run(self.breaker._attempt())
        if not attempt.allowed:
            raise CircuitOpen(self.breaker.name, attempt.state, attempt.retry_after_s)
        self.attempt = attempt
        self.started = self.breaker.clock()
        return attempt

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        verdict = self.breaker.classify(e, self.breaker.clock() - self.started)
        await self.breaker._run(self.breaker._outcome(self.attempt, verdict))


class CircuitBreaker(_Shell, _breaker.CircuitBreakerCore):
    __doc__ = _breaker.CircuitBreakerCore.__doc__


class AdaptiveCircuitBreaker(_Shell, _breaker.AdaptiveCircuitBreakerCore):
    __doc__ = _breaker.AdaptiveCircuitBreakerCore.__doc__

    async def record_result(self, success: bool, attempt: Attempt | None = None) -> None:
        """Count one call's outcome in the shared window ."""
        await self._run(self._record(not success, attempt))
