"""Rates as people write them: ``"100/second"``, ``"10/s; 1000/hour"``, ``"5 per 10 minutes"``.

The grammar follows the ``limits`` library's rate strings, so a user moving over
keeps their configuration, plus an optional burst:

    <count> (/ | per) [<n>] <unit> [burst <b>]

units: ``s``, ``sec``, ``second(s)``, ``m``, ``min``, ``minute(s)``, ``h``, ``hr``,
``hour(s)``, ``d``, ``day(s)``; several rates are separated by ``;``, ``,`` or ``|``.

As a token bucket, ``N/period`` refills ``N / period`` tokens a second and holds a
burst of ``N`` unless told otherwise: a whole period's allowance may be spent at
once, the long-run average is ``N`` per period, and no window of one period admits
more than ``2N``. Give ``burst 1`` (or any smaller burst) for a smoother limit.
"""

from __future__ import annotations

import re

from distlb.errors import ConfigError

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}
_NUMBER = r"(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
_RATE = re.compile(
    rf"^\s*{_NUMBER}\s*(?:/|\s+per\s+)\s*{_NUMBER}?\s*([A-Za-z]+)\s*(?:burst\s+{_NUMBER})?\s*$",
    re.IGNORECASE)
_SEPARATORS = re.compile(r"[;,|]")


def parse_rates(text: object, field: str = "rate") -> list[tuple[float, float]]:
    """``(rate_per_s, burst)`` for each rate in ``text``, in order.

    Raises ``ConfigError`` naming ``field`` and the grammar for anything else; the
    numbers themselves are checked by ``Limit`` (ranges the scripts represent).
    """
    if not isinstance(text, str):
        raise ConfigError(field, f"must be a rate string such as '100/second', got "
                                 f"{type(text).__name__}")
    out = []
    for part in _SEPARATORS.split(text):
        m = _RATE.match(part)
        unit = m.group(3).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ConfigError(field, f"{part.strip()!r} is not a rate: write '<count>/<unit>' "
                                     f"or '<count> per <n> <unit>' (units s, m, h, d), "
                                     f"optionally 'burst <b>', e.g. '10/second; 1000/hour'")
        count = float(m.group(1))
        period_s = float(m.group(2) or 1) * _UNITS[unit]
        if count <= 0 or period_s <= 0:
            raise ConfigError(field, f"{part.strip()!r}: count and period must be positive")
        burst = float(m.group(4)) if m.group(4) is not None else count
        out.append((count / period_s, burst))
    return out
