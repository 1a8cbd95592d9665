"""Retry policies (local) and retry budgets (shared), without I/O.

A policy decides, attempt after attempt, whether to retry and how long to
wait; the shells in ``distlb.retry`` and ``distlb.aio.retry`` only run the
user's function and sleep. A budget caps retries across the whole fleet:
every request deposits, every retry withdraws, one script call each (deposits
are batched locally).
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Unpack

from distlb import _observe
from distlb._core.guard import StoreGuard
from distlb._core.ops import Call, Done, Invoke, Op, Outcome, Sleep, Steps, steps, text
from distlb._core.scripts import script
from distlb._shared import (
    Clock,
    Shared,
    StoreKeywords,
    StoreOptions,
    TimingKeywords,
    TimingOptions,
    timing_options,
)
from distlb._validate import integer, number, window
from distlb.errors import CircuitOpen, ConfigError, RetryBudgetExhausted

# -- backoff strategies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fixed:
    """The same delay before every retry."""

    delay_s: float

    def __post_init__(self) -> None:
        number("delay_s", self.delay_s, low=0, low_inclusive=True, high=86400)

    def delay(self, retry: int, previous_s: float, rng: random.Random) -> float:
        return self.delay_s


@dataclass(frozen=True, slots=True)
class Exponential:
    """``min(max_delay_s, base_s x multiplier^(retry-1))``: 0.1, 0.2, 0.4, ... capped."""

    base_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        number("base_s", self.base_s, high=86400)
        number("multiplier", self.multiplier, low=1, low_inclusive=True, high=100)
        number("max_delay_s", self.max_delay_s, low=self.base_s, low_inclusive=True, high=86400)

    def ceiling(self, retry: int) -> float:
        # Compare exponents, not powers: base x multiplier^retry overflows a float
        # long before a retry count does.
        if (retry - 1) * math.log(self.multiplier) > math.log(self.max_delay_s / self.base_s):
            return self.max_delay_s
        return float(min(self.max_delay_s, self.base_s * self.multiplier ** (retry - 1)))

    def delay(self, retry: int, previous_s: float, rng: random.Random) -> float:
        return self.ceiling(retry)


@dataclass(frozen=True, slots=True)
class ExponentialJitter:
    """Exponential with jitter (AWS architecture blog, "Exponential Backoff And Jitter").

    ``full``:  uniform(0, ceiling) -- the best spread, sometimes a near-zero wait.
    ``equal``: ceiling/2 + uniform(0, ceiling/2) -- never less than half the ceiling.
    The ceiling is ``min(max_delay_s, base_s x 2^(retry-1))``.
    """

    base_s: float = 0.1
    max_delay_s: float = 30.0
    jitter: Literal["full", "equal"] = "full"

    def __post_init__(self) -> None:
        Exponential(self.base_s, 2.0, self.max_delay_s)
        if self.jitter not in ("full", "equal"):
            raise ConfigError("jitter", f"must be 'full' or 'equal', got {self.jitter!r}")

    def delay(self, retry: int, previous_s: float, rng: random.Random) -> float:
        ceiling = Exponential(self.base_s, 2.0, self.max_delay_s).ceiling(retry)
        if self.jitter == "full":
            return rng.uniform(0, ceiling)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class DecorrelatedJitter:
    """``min(max_delay_s, uniform(base_s, previous x 3))``, previous starting at ``base_s``
    (AWS architecture blog): grows like exponential, but each delay depends on the last."""

    base_s: float = 0.1
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        Exponential(self.base_s, 2.0, self.max_delay_s)

    def delay(self, retry: int, previous_s: float, rng: random.Random) -> float:
        previous = previous_s if previous_s > 0 else self.base_s
        return min(self.max_delay_s, rng.uniform(self.base_s, previous * 3))


Backoff = Fixed | Exponential | ExponentialJitter | DecorrelatedJitter

# -- the testing switch ------------------------------------------------------------------------

_testing = threading.Event()


def set_testing(on: bool) -> None:
    """Turn every retry sleep off (``True``) or back on, process-wide: for test suites."""
    if on:
        _testing.set()
    else:
        _testing.clear()


# -- retry budget ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """A budget's answer: may this retry go ahead, and the window's counts."""

    allowed: bool
    deposits: int
    withdrawals: int
    balance: float
    source: str = "store"

    def __bool__(self) -> bool:
        return self.allowed


class _LocalBudget:
    """The in-process budget for ``on_store_error="local"``: one window, this process only."""

    def __init__(self, owner: RetryBudgetCore) -> None:
        self.owner = owner
        self.lock = threading.Lock()
        self.start = owner.clock()
        self.deposits = self.withdrawals = 0

    def decide(self, add: int, withdraw: bool) -> BudgetDecision:
        o = self.owner
        with self.lock:
            now = o.clock()
            if now - self.start > o.window_s:
                self.start, self.deposits, self.withdrawals = now, 0, 0
            self.deposits += add
            balance = o.ratio * self.deposits + o.min_retries_per_s * o.window_s \
                / o.expected_processes - self.withdrawals
            ok = withdraw and balance >= 1
            if ok:
                self.withdrawals += 1
                balance -= 1
            return BudgetDecision(ok, self.deposits, self.withdrawals, balance, "local")


class RetryBudgetCore(Shared):
    """A retry budget shared by every process (Finagle's model).

    Requests deposit, retries withdraw. Over any ``window_s`` (``buckets``
    buckets sliding), retries may not exceed ``ratio`` x requests plus
    ``min_retries_per_s`` x ``window_s``, counted for the whole fleet. Deposits
    are batched: one script call per ``deposit_batch`` requests (or after
    ``deposit_flush_s``), and every withdrawal carries this process's pending
    deposits, so a request costs a fraction of a round trip.

    ``on_store_error``: ``"fail_open"`` allows retries, ``"fail_closed"`` refuses
    them, ``"local"`` keeps a budget in-process (the minimum divided by
    ``expected_processes``). Key: ``<prefix>:{rb:<name>}``, a hash of
    ``<bucket>:d`` deposits and ``<bucket>:w`` withdrawals.

    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.
    """

    kind = "rb"

    def __init__(self, client: Any, name: str, *, ratio: float = 0.2,
                 min_retries_per_s: float = 10.0, window_s: float = 10.0, buckets: int = 10,
                 deposit_batch: int = 10, deposit_flush_s: float = 0.1,
                 expected_processes: int = 1, options: StoreOptions | None = None,
                 **store: Unpack[StoreKeywords]) -> None:
        super().__init__(client, name, options=options, **store)
        self.ratio = number("ratio", ratio, low=0, low_inclusive=True, high=100)
        self.min_retries_per_s = number("min_retries_per_s", min_retries_per_s, low=0,
                                        low_inclusive=True, high=1e6)
        self.window_s = number("window_s", window_s, low=0.01, high=86400)
        self.buckets = integer("buckets", buckets, low=1, high=1000)
        window("window_s", self.window_s, self.buckets)
        self.deposit_batch = integer("deposit_batch", deposit_batch, low=1, high=100_000)
        self.deposit_flush_s = number("deposit_flush_s", deposit_flush_s, low=0,
                                      low_inclusive=True, high=3600)
        self.expected_processes = integer("expected_processes", expected_processes,
                                          low=1, high=100_000)
        # The window in ms, exact (not rounded up: 0.0101 s is 10.1 ms, not 11).
        self._config = (f"{self.ratio!r} {self.min_retries_per_s!r} "
                        f"{self.window_s * 1000!r} {self.buckets}")
        self._lock = threading.Lock()
        self._pending = 0
        self._flushed_at = self.clock()
        self._twin = _LocalBudget(self)

    def _take_pending(self) -> int:
        with self._lock:
            n, self._pending = self._pending, 0
            self._flushed_at = self.clock()
            return n

    def _plan(self, op: str, deposits: int, withdraw: bool) -> Call[BudgetDecision]:
        def parse(reply: Any) -> BudgetDecision:
            f = text(reply).split()
            return BudgetDecision(f[0] == "1", int(f[1]), int(f[2]), float(f[3]))

        def fallback() -> BudgetDecision:
            if self.on_store_error == "local":
                return self._twin.decide(deposits, withdraw)
            ok = withdraw and self.on_store_error == "fail_open"
            return BudgetDecision(ok, 0, 0, math.inf if ok else 0.0, self.on_store_error)

        return Call(script("budget"), (self.key,), (op, deposits, self._config), parse, fallback,
                    self._guard)

    def _deposit(self, n: int) -> Op[Any]:
        n = integer("n", n, low=0, high=10**9)
        with self._lock:
            self._pending += n
            due = (self._pending >= self.deposit_batch
                   or self.clock() - self._flushed_at >= self.deposit_flush_s)
        if not due:
            return Done(None)
        return self._plan("deposit", self._take_pending(), False)

    def _flush(self) -> Call[BudgetDecision]:
        return self._plan("deposit", self._take_pending(), False)

    def _withdraw(self) -> Call[BudgetDecision]:
        return self._plan("withdraw", self._take_pending(), True)

    def _peek(self) -> Call[BudgetDecision]:
        return self._plan("peek", 0, False)

    def _reset(self) -> Call[int]:
        with self._lock:
            self._pending = 0
        return self._delete([self.key])


# -- retry policy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryState:
    """What a ``before_sleep`` hook is told before each wait."""

    attempt: int                    #: the attempt that just failed, 1-based
    delay_s: float                  #: the wait before the next attempt
    elapsed_s: float                #: since the first attempt started
    error: BaseException | None     #: the exception, or None for a retried result
    value: Any = None               #: the result, for ``retry_on_result``


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _is_exception_type(t: object) -> bool:
    return isinstance(t, type) and issubclass(t, BaseException)


def _valid_retry_on(retry_on: object) -> bool:
    if isinstance(retry_on, tuple):
        return all(_is_exception_type(t) for t in retry_on)
    return _is_exception_type(retry_on) or (callable(retry_on) and not isinstance(retry_on, type))


def _retryable(retry_on: RetryOn, error: BaseException) -> bool:
    if isinstance(error, CircuitOpen):
        # The breaker would refuse the retry too: retrying only spends budget. Retry
        # CircuitOpen only when asked by name (e.g. a caller that picks another backend).
        named = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        return any(isinstance(t, type) and issubclass(t, CircuitOpen) for t in named) or (
            callable(retry_on) and not isinstance(retry_on, type | tuple)
            and bool(retry_on(error)))
    if isinstance(retry_on, type | tuple):
        return isinstance(error, retry_on)
    return bool(retry_on(error))


@dataclass(frozen=True, init=False)
class RetryPolicyCore:
    """How to retry a call: a backoff, limits, what to retry, and an optional shared budget.

    ``fn`` is called once per attempt, so a closure may steer each retry to
    another backend. ``CircuitOpen`` is not retried unless ``retry_on`` names it
    (or a predicate accepts it): an open breaker would refuse the retry too, so a
    retry is never sent to a backend whose breaker is open.

    Immutable: the ``with_*`` builders return a new policy. Exceptions not
    matched by ``retry_on`` propagate at once, and so does one whose ``retryable``
    attribute is ``False`` (a marker an integration sets: "may have been sent", say).
    An error's ``retry_delay_s`` attribute (seconds, e.g. a server's ``Retry-After``)
    is the least wait before the next attempt. When attempts run out the last
    exception is raised again (or, for ``retry_on_result``, the last result is
    returned). With ``max_total_s`` an attempt is never started if the wait plus
    the longest attempt so far would pass the deadline. With a budget, each call
    deposits once and each retry withdraws; a refused retry raises
    ``RetryBudgetExhausted`` from the last error.

    Keyword-only arguments: ``backoff`` (default: ``ExponentialJitter()``),
    ``max_attempts`` (1-1000, default 3), ``max_total_s`` (seconds or None),
    ``retry_on`` (exception classes or a predicate), ``retry_on_result`` (a
    predicate on results, or None), ``before_sleep`` (hooks given a
    ``RetryState``), ``budget`` (a ``RetryBudget`` or None), ``rng`` (a
    ``random.Random`` for the jitter). ``options``: a ``TimingOptions`` (``clock``,
    ``sleep``), or the ``StoreOptions`` the application gives its primitives (a
    policy is local: it reads only those two fields); or ``clock``/``sleep`` as
    keywords (a field given both ways is a ``ConfigError``). They time only the
    local waits between attempts.
    """

    backoff: Backoff
    max_attempts: int
    max_total_s: float | None
    retry_on: RetryOn
    retry_on_result: Callable[[Any], bool] | None
    before_sleep: tuple[Callable[[RetryState], None], ...]
    budget: RetryBudgetCore | None
    rng: random.Random
    options: TimingOptions

    def __init__(self, *, backoff: Backoff | None = None, max_attempts: int = 3,
                 max_total_s: float | None = None, retry_on: RetryOn = Exception,
                 retry_on_result: Callable[[Any], bool] | None = None,
                 before_sleep: tuple[Callable[[RetryState], None], ...] = (),
                 budget: RetryBudgetCore | None = None, rng: random.Random | None = None,
                 options: TimingOptions | None = None,
                 **timing: Unpack[TimingKeywords]) -> None:
        # Written out (not the dataclass's) so the timing comes from one options object,
        # as every primitive's does, while ``clock=``/``sleep=`` keep working.
        put = object.__setattr__
        put(self, "backoff", ExponentialJitter() if backoff is None else backoff)
        put(self, "max_attempts", max_attempts)
        put(self, "max_total_s", max_total_s)
        put(self, "retry_on", retry_on)
        put(self, "retry_on_result", retry_on_result)
        put(self, "before_sleep", tuple(before_sleep))
        put(self, "budget", budget)
        put(self, "rng", random.Random() if rng is None else rng)
        put(self, "options", timing_options(options, timing))
        self.__post_init__()

    @property
    def clock(self) -> Clock:
        """Monotonic seconds (``options.clock``): times the attempts and ``max_total_s``."""
        return self.options.clock

    @property
    def sleep(self) -> Callable[[float], Any] | None:
        """How the waits sleep (``options.sleep``; None: ``time.sleep`` / ``asyncio.sleep``)."""
        return self.options.sleep

    def __post_init__(self) -> None:
        if not isinstance(self.backoff, Fixed | Exponential | ExponentialJitter
                          | DecorrelatedJitter):
            raise ConfigError("backoff", "must be Fixed, Exponential, ExponentialJitter or "
                                         "DecorrelatedJitter")
        integer("max_attempts", self.max_attempts, low=1, high=1000)
        if self.max_total_s is not None:
            number("max_total_s", self.max_total_s, high=86400)
        if not _valid_retry_on(self.retry_on):
            raise ConfigError("retry_on", "must be an exception class, a tuple of them, or a "
                                          "predicate taking the exception")
        if self.budget is not None and not isinstance(self.budget, RetryBudgetCore):
            raise ConfigError("budget", "must be a RetryBudget or None")

    def _check_budget_flavour(self, budget_type: type[RetryBudgetCore]) -> None:
        """Called by the shells: a budget must be of the policy's own package."""
        if self.budget is not None and not isinstance(self.budget, budget_type):
            raise ConfigError("budget", "must come from the same package as the policy "
                                        "(distlb.RetryBudget with distlb.RetryPolicy, "
                                        "distlb.aio.RetryBudget with distlb.aio.RetryPolicy)")

    # -- named constructors --------------------------------------------------------------------

    @classmethod
    def fixed(cls, delay_s: float = 1.0, *, max_attempts: int = 3) -> Any:
        return cls(backoff=Fixed(delay_s), max_attempts=max_attempts)

    @classmethod
    def exponential(cls, base_s: float = 0.1, *, multiplier: float = 2.0,
                    max_delay_s: float = 30.0, max_attempts: int = 3) -> Any:
        return cls(backoff=Exponential(base_s, multiplier, max_delay_s),
                   max_attempts=max_attempts)

    @classmethod
    def exponential_with_jitter(cls, base_s: float = 0.1, *, max_delay_s: float = 30.0,
                                max_attempts: int = 3,
                                jitter: Literal["full", "equal"] = "full") -> Any:
        return cls(backoff=ExponentialJitter(base_s, max_delay_s, jitter),
                   max_attempts=max_attempts)

    @classmethod
    def decorrelated_jitter(cls, base_s: float = 0.1, *, max_delay_s: float = 30.0,
                            max_attempts: int = 3) -> Any:
        return cls(backoff=DecorrelatedJitter(base_s, max_delay_s), max_attempts=max_attempts)

    @classmethod
    def default(cls) -> Any:
        """3 attempts, exponential backoff with full jitter from 0.1 s, capped at 30 s."""
        return cls()

    # -- builders ------------------------------------------------------------------------------

    def with_max_attempts(self, n: int) -> Any:
        return dataclasses.replace(self, max_attempts=n)

    def with_max_total_time(self, seconds: float) -> Any:
        return dataclasses.replace(self, max_total_s=seconds)

    def with_budget(self, budget: RetryBudgetCore | None) -> Any:
        return dataclasses.replace(self, budget=budget)

    def with_retry_on(self, retry_on: RetryOn) -> Any:
        return dataclasses.replace(self, retry_on=retry_on)

    def with_retry_on_result(self, predicate: Callable[[Any], bool] | None) -> Any:
        return dataclasses.replace(self, retry_on_result=predicate)

    def with_before_sleep(self, hook: Callable[[RetryState], None]) -> Any:
        return dataclasses.replace(self, before_sleep=(*self.before_sleep, hook))

    def with_random(self, rng: random.Random) -> Any:
        return dataclasses.replace(self, rng=rng)

    def with_options(self, options: TimingOptions) -> Any:
        """The same policy timed by ``options`` (a ``TimingOptions`` or a ``StoreOptions``)."""
        return dataclasses.replace(self, options=options)

    def with_clock(self, clock: Clock) -> Any:
        return dataclasses.replace(self, options=self.options.replace(clock=clock))

    def with_sleep(self, sleep: Callable[[float], Any]) -> Any:
        return dataclasses.replace(self, options=self.options.replace(sleep=sleep))

    # -- the decision loop ---------------------------------------------------------------------

    def delays(self) -> list[float]:
        """The waits this policy would make if every attempt failed (draws from ``rng``)."""
        out: list[float] = []
        previous = 0.0
        for retry in range(1, self.max_attempts):
            previous = self.backoff.delay(retry, previous, self.rng)
            out.append(previous)
        return out

    def _store_guard(self) -> StoreGuard:
        """The guard a runner of this policy starts from: the budget's (its calls carry it as
        their owner anyway); without a budget no call is ever made."""
        if self.budget is not None:
            return self.budget._guard
        return StoreGuard("retry policy", 1.0, self.clock)

    def _execute(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Steps[Any]:
        return self._attempts(lambda: invoke(fn, args, kwargs))

    def attempts_op(self, run_attempt: Callable[[], Steps[Outcome]]) -> Steps[Any]:
        """The retry loop around ``run_attempt`` as an operation: the internal interface a
        load balancer's execute retries by (one runner drives both)."""
        return self._attempts(run_attempt)

    def _attempts(self, run_attempt: Callable[[], Steps[Outcome]]) -> Steps[Any]:
        """The decision loop around ``run_attempt``, an operation run once per attempt (the
        load balancer's picks a backend, leases it and calls the user's function)."""
        start = self.clock()
        previous_delay = 0.0
        longest = 0.0
        attempt = 0
        while True:
            attempt += 1
            outcome = yield from run_attempt()
            if attempt == 1 and self.budget is not None:
                # A request deposits once it was made: one refused before reaching a
                # backend (rate limited: the attempt raised) must not earn retries.
                yield from steps(self.budget._deposit(1))
            longest = max(longest, outcome.duration_s)
            error = outcome.error
            if error is None:
                if self.retry_on_result is None or not self.retry_on_result(outcome.value):
                    return outcome.value
            elif getattr(error, "retryable", None) is False or not _retryable(self.retry_on, error):
                raise error
            if attempt >= self.max_attempts:
                _observe.retry("gave_up")
                return _give_up(outcome)
            delay = self.backoff.delay(attempt, previous_delay, self.rng)
            previous_delay = delay
            delay = max(delay, getattr(error, "retry_delay_s", 0.0))  # the error's own floor
            elapsed = self.clock() - start
            if self.max_total_s is not None and elapsed + delay + longest > self.max_total_s:
                _observe.retry("gave_up")
                return _give_up(outcome)
            if self.budget is not None:
                decision = yield from steps(self.budget._withdraw())
                if not decision.allowed:
                    _observe.retry("budget_denied")
                    exhausted = RetryBudgetExhausted(self.budget.name, attempt, decision.balance)
                    if error is not None:
                        raise exhausted from error
                    return outcome.value
            _observe.retry("retried")
            state = RetryState(attempt, delay, elapsed, error, outcome.value)
            for hook in self.before_sleep:
                hook(state)
            if not _testing.is_set() and delay > 0:
                yield Sleep(delay)


def invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Steps[Outcome]:
    """One plain attempt: call the user's function."""
    outcome: Outcome = yield Invoke(fn, args, kwargs)
    return outcome


def _give_up(outcome: Outcome) -> Any:
    if outcome.error is not None:
        raise outcome.error
    return outcome.value
