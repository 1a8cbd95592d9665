"""Retries: ``RetryPolicy`` (local backoff and limits) and ``RetryBudget`` (shared cap).

``distlb.aio.retry`` is generated from this file: the same classes, awaited.
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
from distlb._runtime import SyncRunner
from distlb._shell import SyncDrive, SyncShared

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


class RetryBudget(SyncShared, _retry.RetryBudgetCore):
    __doc__ = _retry.RetryBudgetCore.__doc__

    def deposit(self, n: int = 1) -> None:
        """Count ``n`` requests (batched: usually no round trip)."""
        self._run(self._deposit(n))

    def try_withdraw(self) -> BudgetDecision:
        """Take one retry from the budget if it has one; carries pending deposits."""
        return self._run(self._withdraw())

    def flush(self) -> BudgetDecision:
        """Send pending deposits now."""
        return self._run(self._flush())

    def peek(self) -> BudgetDecision:
        """The window's counts and balance, taking nothing."""
        return self._run(self._peek())

    def reset(self) -> None:
        """Empty the window for every process."""
        self._run(self._reset())


class RetryPolicy(_retry.RetryPolicyCore):
    __doc__ = _retry.RetryPolicyCore.__doc__

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_budget_flavour(RetryBudget)

    @property
    def _run(self) -> SyncDrive:
        """A runner for one call: the budget's calls run on the budget's client and guard."""
        guard = self._store_guard()
        runner = SyncRunner(guard) if self.sleep is None else SyncRunner(guard, self.sleep)
        return runner.drive

    def execute(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)``, retrying as the policy says."""
        return self._run(self._execute(fn, args, kwargs))

    def __call__(self, fn: F) -> F:
        """Use the policy as a decorator."""
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self._run(self._execute(fn, args, kwargs))
        return wrapper  # type: ignore[return-value]
