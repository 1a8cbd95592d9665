"""Asyncio twin of ``distlb.retry``: the same classes and methods, awaited.

Use a ``redis.asyncio`` client. Concurrent calls from many tasks are coalesced
into pipelines: one round trip carries many decisions, each still its own
atomic script.

GENERATED from distlb/retry.py by tools/gen_aio.py: do not edit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from distlb import _retry
from distlb._retry import (
    BudgetDecision,
    DecorrelatedJitter,
    Exponential,
    ExponentialJitter,
    Fixed,
    RetryState,
    set_testing,
)
from distlb._runtime import AsyncRunner
from distlb._shell import AsyncDrive, AsyncShared

__all__ = [
    "BudgetDecision",
    "DecorrelatedJitter",
    "Exponential",
    "ExponentialJitter",
    "Fixed",
    "RetryBudget",
    "RetryPolicy",
    "RetryState",
    "set_testing",
]
F = TypeVar("F", bound=Callable[..., Any])


class RetryBudget(AsyncShared, _retry.RetryBudgetCore):
    __doc__ = _retry.RetryBudgetCore.__doc__

    async def deposit(self, n: int = 1) -> None:
        """Count ``n`` requests (batched: usually no round trip)."""
        await self._run(self._deposit(n))

    async def try_withdraw(self) -> BudgetDecision:
        """Take one retry from the budget if it has one; carries pending deposits."""
        return await self._run(self._withdraw())

    async def flush(self) -> BudgetDecision:
        """Send pending deposits now."""
        return await self._run(self._flush())

    async def peek(self) -> BudgetDecision:
        """The window's counts and balance, taking nothing."""
        return await self._run(self._peek())

    async def reset(self) -> None:
        """Empty the window for every process."""
        await self._run(self._reset())


class RetryPolicy(_retry.RetryPolicyCore):
    __doc__ = _retry.RetryPolicyCore.__doc__

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_budget_flavour(RetryBudget)

    @property
    def _run(self) -> AsyncDrive:
        """A runner for one call: the budget's calls run on the budget's client and guard."""
        guard = self._store_guard()
        runner = AsyncRunner(guard) if self.sleep is None else AsyncRunner(guard, sleep=self.sleep)
        return runner.drive

    async def execute(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)``, retrying as the policy says."""
        return await self._run(self._execute(fn, args, kwargs))

    def __call__(self, fn: F) -> F:
        """Use the policy as a decorator."""
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self._run(self._execute(fn, args, kwargs))
        return wrapper  # type: ignore[return-value]
