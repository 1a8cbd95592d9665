"""A pool's admission: its limits, request priority and bandwidth, in ``pool.lua admit``.

Pure planning for the ``admit`` op of ``pool.lua`` (the Lua side is the
``admit_read`` / ``admit_charge`` / ``admit_count`` block of ``lua/_common.lua``):
which limits a request meets, the arguments and keys the script needs, and the
error a denial raises. The balancer (``distlb._balancer``) only calls these.
The priority rule is shared with a traffic shaper's global limit: the same settings
(``check_priority_settings``), argument (``priority_policy``) and Lua
(``prio_read`` / ``prio_need`` / ``prio_count``, which ``admit_read`` calls and
``lua/bucket.lua`` too).

The rule (the README's "Priority and bandwidth through the pool"):

* **Priority** (``Context.priority``, an int in [0, 9]). The pool's ``rate_limit``
  bucket holds back a reserve for higher levels: a request of level ``p`` takes a
  token only while the bucket holds at least ``1 + reserve(p)`` tokens, where
  ``reserve(p) = priority_reserve x burst x (top - p) / 9`` and ``top`` is the
  highest level that asked within the last ``priority_window_s`` (0 when ``p`` is
  that level, or above it). So when the fleet is over its limit, lower levels are
  shed first and higher ones keep being admitted; when only one level asks, it has
  the whole burst (a pool used without priorities behaves as before).
  No starvation (aging): a level not admitted for ``1 / (priority_min_share x
  rate)`` seconds (its last admission is in the ``:prio`` hash) asks without
  reserve, so every level that keeps asking gets about ``priority_min_share`` of the
  limit or more.
* **Bandwidth** (``Context.bytes``): ``client_bandwidth`` (per ``ctx.client_id``)
  and ``backend_bandwidth`` (per backend, the one actually chosen) are byte
  buckets charged with the request's size in the same script call that takes the
  lease. The request limits (``rate_limit``, ``client_limit``) and the client's
  bandwidth are charged once per ``execute``; a retry on another backend is charged
  against that backend's bandwidth only. Any denial charges nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distlb import _keys
from distlb._validate import number
from distlb.errors import ConfigError, RateLimited
from distlb.strategies.base import MAX_PRIORITY, Context

if TYPE_CHECKING:
    from distlb._shaping import Limit

#: The limit kinds a denial names (``limited:<kind> <retry_after_s>`` from the script).
KINDS = ("pool", "client", "client_bandwidth", "backend_bandwidth")


@dataclass(frozen=True, slots=True)
class Admission:
    """A pool's admission settings, validated once (see the module docstring). The
    request limits (``rate_limit``, ``client_limit``) are passed at each call, as the pool
    holds them then (they may change at run time).

    ``priority_reserve``: the part of ``rate_limit``'s burst held back from the
    lowest level for the highest, in [0, 1] (0 = strict FIFO, priorities ignored).
    ``priority_min_share``: the part of ``rate_limit``'s rate every asking level gets
    at least (about), in [0, 0.1] (10 levels x 0.1 = everything; 0 = strict priority,
    lower levels may starve). ``priority_window_s``: seconds, in [0.1, 3600], a level
    counts as asking after its last request (the reserve is held for it that long).
    """

    client_bandwidth: Limit | None
    backend_bandwidth: Limit | None
    priority_reserve: float = 0.5
    priority_min_share: float = 0.05
    priority_window_s: float = 10.0

    def __post_init__(self) -> None:
        from distlb._shaping import Limit
        for name in ("client_bandwidth", "backend_bandwidth"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Limit):
                raise ConfigError(name, "must be a distlb.Limit or None")
        reserve, share, window = check_priority_settings(
            self.priority_reserve, self.priority_min_share, self.priority_window_s)
        object.__setattr__(self, "priority_reserve", reserve)
        object.__setattr__(self, "priority_min_share", share)
        object.__setattr__(self, "priority_window_s", window)

    def applies(self, ctx: Context, first: bool, rate_limit: Limit | None,
                client_limit: Limit | None) -> bool:
        """Whether a request meets any limit (else the plain ``acquire`` op serves it)."""
        if ctx.bytes and (self.backend_bandwidth is not None
                          or (first and self.client_bandwidth is not None and ctx.client_id)):
            return True
        return first and (rate_limit is not None
                          or (client_limit is not None and bool(ctx.client_id)))

    def plan(self, pool_key: str, backend_id: str, ctx: Context, first: bool,
             rate_limit: Limit | None,
             client_limit: Limit | None) -> tuple[list[Any], tuple[str, ...]]:
        """The ``admit`` op's arguments after ``<id> <lease> <ttl_ms>`` and its keys after
        pool.lua's six: ``first`` is the first attempt of a call (request limits and the
        client's bandwidth are charged once; the chosen backend's bandwidth every time)."""
        client = _keys.escape(ctx.client_id, "client_id") if ctx.client_id else "-"
        nbytes = ctx.bytes if ctx.bytes else 0
        for name, limit in (("client_bandwidth", self.client_bandwidth),
                            ("backend_bandwidth", self.backend_bandwidth)):
            if nbytes and limit is not None and nbytes > limit.burst:
                raise ConfigError("bytes", f"must be at most the {name} burst "
                                           f"({limit.burst:g}), got {nbytes:g}")

        def spec(limit: Limit | None, when: bool) -> str:
            return limit.encode() if limit is not None and when else "-"

        args: list[Any] = [
            spec(rate_limit, first),
            spec(client_limit, first and bool(ctx.client_id)),
            ctx.priority,
            priority_policy(self.priority_reserve, self.priority_min_share,
                            self.priority_window_s, rate_limit),
            repr(float(nbytes)),
            spec(self.client_bandwidth, first and bool(nbytes) and bool(ctx.client_id)),
            spec(self.backend_bandwidth, bool(nbytes)),
        ]
        keys = (_keys.part(pool_key, "rl"), _keys.part(pool_key, "rl", "c", client),
                _keys.part(pool_key, "prio"), _keys.part(pool_key, "rl", "cb", client),
                _keys.part(pool_key, "rl", "bb", _keys.escape(backend_id, "backend_id")))
        return args, keys


def check_priority_settings(reserve: float, min_share: float,
                            window_s: float) -> tuple[float, float, float]:
    """``(priority_reserve, priority_min_share, priority_window_s)`` validated (the
    ranges of ``Admission``), else ``ConfigError`` naming the field: a pool's and a
    traffic shaper's priority settings are checked here, alike."""
    return (number("priority_reserve", reserve, low_inclusive=True, high=1),
            number("priority_min_share", min_share, low_inclusive=True, high=0.1),
            number("priority_window_s", window_s, low=0.1, low_inclusive=True, high=3600))


def priority_policy(reserve: float, min_share: float, window_s: float,
                    rate_limit: Limit | None) -> str:
    """The ``"<reserve per level> <starve us> <window us>"`` argument of ``prio_read``
    (``lua/_common.lua``), the one rule for a pool's ``rate_limit`` and a traffic
    shaper's ``global_limit``. A level not admitted for ``1 / (min_share x rate)``
    seconds asks without reserve (starve us; 0, never, without a limit or a share)."""
    starve = 0
    if rate_limit is not None and min_share:
        starve = math.ceil(1e6 / (min_share * rate_limit.rate_per_s))
    return f"{reserve / MAX_PRIORITY!r} {starve} {math.ceil(window_s * 1e6)}"


def denial(status: str, pool_name: str, ctx: Context, backend_id: str) -> RateLimited:
    """The ``RateLimited`` for a ``limited:<kind> <retry_after_s>`` status."""
    which, _, wait = status[len("limited:"):].partition(" ")
    label = {"pool": f"pool {pool_name!r}", "client": f"client:{ctx.client_id}",
             "client_bandwidth": f"client_bandwidth:{ctx.client_id}",
             "backend_bandwidth": f"backend_bandwidth:{backend_id}"}.get(which, which)
    return RateLimited(label, float(wait))


__all__ = ["KINDS", "Admission", "check_priority_settings", "denial", "priority_policy"]
