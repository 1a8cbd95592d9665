"""The exception hierarchy: one root, ``DistlbError``.

Limit outcomes are *values* (``Decision``); only the guard helpers raise
(``acquire`` raises ``RateLimited`` when it gives up waiting). Invalid
configuration raises ``ConfigError``, which is also a ``ValueError`` so code
that validates input generically keeps working.
"""

from __future__ import annotations


class DistlbError(Exception):
    """Root of every exception distlb raises on purpose."""


class ConfigError(DistlbError, ValueError):
    """A setting or argument is invalid. The message names the field and the allowed range."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class RateLimited(DistlbError):
    """Raised by blocking ``acquire`` helpers that gave up waiting.

    ``retry_after_s`` is the server's estimate of when the request would have
    been admitted; ``reason`` names the limit that denied it.
    """

    def __init__(self, reason: str, retry_after_s: float) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"rate limited by {reason}; retry after {retry_after_s:.3f}s")


class CircuitOpen(DistlbError):
    """Raised by a breaker's ``call``, decorator or guard when it refuses a call.

    ``state`` is ``"open"`` or ``"half_open"`` (every probe slot taken);
    ``retry_after_s`` is when trying again may succeed.
    """

    def __init__(self, name: str, state: str, retry_after_s: float) -> None:
        self.name = name
        self.state = state
        self.retry_after_s = retry_after_s
        super().__init__(f"circuit {name!r} is {state}; retry after {retry_after_s:.3f}s")


class RetryBudgetExhausted(DistlbError):
    """A retry was not made because the fleet's retry budget is spent.

    Raised from the last error of the call (``__cause__``). ``attempt`` is the
    number of attempts made; ``balance`` what the budget had left (< 1).
    """

    def __init__(self, budget: str, attempt: int, balance: float) -> None:
        self.budget = budget
        self.attempt = attempt
        self.balance = balance
        super().__init__(f"retry budget {budget!r} exhausted after attempt {attempt} "
                         f"(balance {balance:.2f})")


class StoreUnavailable(DistlbError):
    """The store could not be reached for a call that has no failure policy: a
    configuration change (registry changes, ``TrafficShaper.set_*``, forced
    breaker states, ``reset()``), a read of shared configuration
    (``TrafficShaper.limits()``), or a pool configured ``on_store_error="fail_closed"``."""


class StoreError(DistlbError):
    """The store answered with an error that no failure policy should hide.

    Raised for a wrong-type key or a script error: conditions that mean state or
    configuration is broken, not that the server is merely unreachable.
    """


class StoreAuthError(StoreError):
    """The store refused this client: a wrong or missing password (``WRONGPASS``,
    ``NOAUTH``), an ACL user lacking a command, key or channel permission
    (``NOPERM``), or a TLS certificate that does not verify.

    These are configuration errors, not outages: no failure policy applies
    (``fail_open`` would otherwise silently disable every limit), the error is
    raised to the caller on every call until the configuration is fixed.
    """
