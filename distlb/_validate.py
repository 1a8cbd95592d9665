"""Argument checks shared by every public constructor and method.

Each raises :class:`~distlb.errors.ConfigError` naming the field and the allowed
range, before anything reaches the store: bad input can never corrupt a key.

The numeric ranges of the limiters are derived from what the Lua scripts can
represent, and enforced here only (the README's "Valid ranges" table lists them):

* amounts (rates, bursts, capacities, costs, bytes) are doubles in Lua, stored
  round-trip exact (``%.17g``); ``[MIN_AMOUNT, MAX_AMOUNT]`` keeps every product
  and quotient of two of them a normal double, far from overflow and subnormals;
* a bucket's refill time (``burst / rate``) and a leaky bucket's longest wait
  (``capacity / rate``) become a key TTL in milliseconds (``PEXPIRE``) and a
  server time in microseconds: at most ``MAX_REFILL_S`` keeps both exact integers
  (below 2**53) and the TTL far below ``PEXPIRE``'s limit;
* a charge ``tokens - cost`` is exact to 2**-53 of the burst, so a cost below
  ``burst x MIN_COST_FRACTION`` would be (partly) rounded away: it is refused;
* sliding windows count in buckets of at least ``MIN_BUCKET_S``: the bucket
  number stays an integer the scripts write exactly.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from distlb.errors import ConfigError

StorePolicy = Literal["fail_open", "fail_closed", "local"]
STORE_POLICIES: tuple[str, ...] = get_args(StorePolicy)
#: Upper bound on rates, bursts and costs: far above any real limit, and small
#: enough that the Lua arithmetic (doubles, microseconds) stays exact.
MAX_AMOUNT = 1e12
#: Lower bound on rates, bursts, capacities and costs (per second or units).
MIN_AMOUNT = 1e-9
#: Longest refill time ``burst / rate`` (and leaky wait ``capacity / rate``): 10 years, s.
MAX_REFILL_S = 10 * 365 * 86400.0
#: A cost must be at least this fraction of the bucket's burst (or leaky capacity).
MIN_COST_FRACTION = 1e-12
#: Shortest bucket of a sliding window (``window_s / buckets``), seconds.
MIN_BUCKET_S = 0.001
#: What one request costs where a limit counts requests (a pool's ``rate_limit`` and
#: ``client_limit``, a shaper's ``global_limit`` and ``client_limit``): such a limit's
#: burst must hold at least this much, or no request could ever be admitted.
REQUEST_COST = 1.0


def show(value: object) -> str:
    """``repr(value)`` for an error message, bounded: a 5000-digit int cannot even be
    printed (``ValueError``), and a message need not echo megabytes of input."""
    try:
        text = repr(value)
    except Exception:  # any repr failure: describe the type instead
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else f"{text[:60]}...<{len(text)} chars>"


def number(field: str, value: object, *, low: float = 0.0, high: float = MAX_AMOUNT,
           low_inclusive: bool = False) -> float:
    """A finite real number in (low, high] (or [low, high] with ``low_inclusive``): the
    low bound is EXCLUSIVE by default (a duration or a rate must be above 0)."""
    bracket = "[" if low_inclusive else "("
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number in {bracket}{low:g}, {high:g}], got "
                                 f"{show(value)} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the largest double
        v = math.inf
    above = v >= low if low_inclusive else v > low
    if not math.isfinite(v) or not above or v > high:
        raise ConfigError(field, f"must be a finite number in {bracket}{low:g}, {high:g}], "
                                 f"got {show(value)}")
    return v


def integer(field: str, value: object, *, low: int, high: int) -> int:
    """An int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an int in [{low}, {high}], got {show(value)} "
                                 f"({type(value).__name__})")
    if not low <= value <= high:
        raise ConfigError(field, f"must be in [{low}, {high}], got {show(value)}")
    return int(value)


def amount(field: str, value: object) -> float:
    """A rate, burst, capacity or cost: a number in [MIN_AMOUNT, MAX_AMOUNT]."""
    return number(field, value, low=MIN_AMOUNT, low_inclusive=True, high=MAX_AMOUNT)


def refill(rate_field: str, rate: float, burst_field: str, burst: float) -> None:
    """``burst / rate`` (the time to refill, or a leaky bucket's longest wait) fits."""
    if burst / rate > MAX_REFILL_S:
        raise ConfigError(burst_field,
                          f"{burst_field} / {rate_field} (the refill time) must be at most "
                          f"{MAX_REFILL_S:g} s (10 years), got {burst:g} / {rate:g} = "
                          f"{burst / rate:g} s")


def limit(rate_field: str, rate: object, burst_field: str, burst: object) -> tuple[float, float]:
    """A valid (rate, burst) pair: each an amount, and the refill time in range."""
    r, b = amount(rate_field, rate), amount(burst_field, burst)
    refill(rate_field, r, burst_field, b)
    return r, b


def cost(value: object, burst: float, field: str = "cost", burst_field: str = "burst") -> float:
    """A positive cost that fits in the bucket: a cost above burst could never be admitted,
    and one below ``burst x MIN_COST_FRACTION`` would be lost to rounding."""
    c = number(field, value)
    check_cost(c, burst, field, burst_field)
    return c


def check_cost(c: float, burst: float, field: str = "cost", burst_field: str = "burst") -> None:
    """Raise unless ``burst x MIN_COST_FRACTION <= c <= burst`` (``c`` already a number)."""
    if c > burst:
        hint = (f" (a {burst_field} below {REQUEST_COST:g} admits only fractional costs: "
                f"pass cost=)" if burst < REQUEST_COST else "")
        raise ConfigError(field, f"must be at most {burst_field} ({burst:g}), got {c:g}{hint}")
    low = max(MIN_AMOUNT, burst * MIN_COST_FRACTION)
    if c < low:
        raise ConfigError(field, f"must be at least {low:g} ({burst_field} x "
                                 f"{MIN_COST_FRACTION:g}, and at least {MIN_AMOUNT:g}), "
                                 f"got {c:g}")


def request_burst(field: str, burst: float) -> None:
    """A limit that counts requests (each costs ``REQUEST_COST``) must hold one: its burst
    in ``[REQUEST_COST, MAX_AMOUNT]``. ``field`` names the limit (``rate_limit``, ...)."""
    if not burst >= REQUEST_COST:
        raise ConfigError(field, f"burst must be in [{REQUEST_COST:g}, {MAX_AMOUNT:g}] for a "
                                 f"limit on requests (each request costs {REQUEST_COST:g}: a "
                                 f"smaller burst could never admit one), got {burst:g}")


def window(window_field: str, window_s: float, buckets: int) -> None:
    """A sliding window's buckets are at least MIN_BUCKET_S long."""
    if window_s / buckets < MIN_BUCKET_S:
        raise ConfigError("buckets", f"{window_field} / buckets must be at least "
                                     f"{MIN_BUCKET_S:g} s (1 ms), got {window_s:g} / {buckets}")


def store_policy(value: object) -> StorePolicy:
    try:
        ok = value in STORE_POLICIES
    except Exception:  # an object whose __eq__ raises is simply not a policy
        ok = False
    if not ok:
        raise ConfigError("on_store_error",
                          f"must be one of {', '.join(STORE_POLICIES)}; got {show(value)}")
    return value  # type: ignore[return-value]
