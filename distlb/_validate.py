"""Argument checks shared by every public constructor and method.

Each raises :class:`~distlb.errors.ConfigError` naming the field and the allowed
range, before anything reaches the store: bad input can never corrupt a key.
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


def number(field: str, value: object, *, low: float = 0.0, high: float = MAX_AMOUNT,
           low_inclusive: bool = False) -> float:
    """A finite real number in (low, high] (or [low, high] with ``low_inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number, got {type(value).__name__}")
    v = float(value)
    above = v >= low if low_inclusive else v > low
    if not math.isfinite(v) or not above or v > high:
        bracket = "[" if low_inclusive else "("
        raise ConfigError(field,
                          f"must be a finite number in {bracket}{low:g}, {high:g}], got {value!r}")
    return v


def integer(field: str, value: object, *, low: int, high: int) -> int:
    """An int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ConfigError(field, f"must be in [{low}, {high}], got {value}")
    return value


def cost(value: object, burst: float, field: str = "cost", burst_field: str = "burst") -> float:
    """A positive cost that fits in the bucket: a cost above burst could never be admitted."""
    c = number(field, value)
    if c > burst:
        raise ConfigError(field, f"must be at most {burst_field} ({burst:g}), got {c:g}")
    return c


def store_policy(value: object) -> StorePolicy:
    if value not in STORE_POLICIES:
        raise ConfigError("on_store_error",
                          f"must be one of {', '.join(STORE_POLICIES)}; got {value!r}")
    return value  # type: ignore[return-value]
