"""The argument checks distlb runs on its own settings, public for an application's own.

Each returns the value checked (``number``: as a float) or raises ``ConfigError``
naming the field and the allowed range, with the very messages the library's
constructors use: a command line or a settings loader built on distlb reports a
bad value of its own the way distlb reports one of its own (``distlb demo`` does).

* ``number(field, value, *, low=0.0, high=1e12, low_inclusive=False)``: a finite
  real number (not a bool) in ``(low, high]``, or ``[low, high]`` with
  ``low_inclusive``.
* ``integer(field, value, *, low, high)``: an int (not a bool) in ``[low, high]``.
"""

from distlb._validate import integer, number

__all__ = ["integer", "number"]
