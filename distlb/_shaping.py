"""Traffic-shaping primitives, without I/O: configuration, keys and operations.

``distlb.shaping`` (sync) and ``distlb.aio.shaping`` (asyncio) subclass these
and only drive the operations. Every decision is one ``EVALSHA`` on the
server's clock.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar, Unpack

from distlb import _keys
from distlb._core import bucket, leaky, priority
from distlb._core.admission import check_priority_settings, priority_policy
from distlb._core.guard import Command, no_policy
from distlb._core.local import LocalState
from distlb._core.ops import Call, Op, Sleep, Steps
from distlb._core.scripts import script
from distlb._rates import parse_rates
from distlb._shared import Shared, StoreKeywords, StoreOptions
from distlb._validate import check_cost as check_amount
from distlb._validate import cost as check_cost
from distlb._validate import integer, number, request_burst
from distlb._validate import limit as check_limit
from distlb.errors import ConfigError, RateLimited
from distlb.results import Decision, LeakyDecision, PriorityDecision
from distlb.strategies.base import check_priority

D = TypeVar("D", Decision, LeakyDecision)
log = logging.getLogger("distlb")


@dataclass(frozen=True, slots=True)
class Limit:
    """A token-bucket limit: refill ``rate_per_s`` tokens per second, hold at most ``burst``.

    For bandwidth limits the unit is bytes: ``Limit(1_000_000, 64_000)`` is 1 MB/s
    with 64 kB bursts. Both lie in [1e-9, 1e12] and the refill time ``burst /
    rate_per_s`` is at most 10 years (what the scripts represent exactly).

    A limit on requests (a pool's ``rate_limit``/``client_limit``, a shaper's
    ``global_limit``/``client_limit`` and their ``set_*`` overrides) must also hold one
    request of cost 1: ``burst >= 1`` (``check_request_limit``). A slow rate is a small
    ``rate_per_s`` with a burst of 1 (``Limit(0.5, 1)``: one request every 2 s), never
    a burst below 1, which could admit no request at all.
    """

    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        rate, burst = check_limit("rate_per_s", self.rate_per_s, "burst", self.burst)
        object.__setattr__(self, "rate_per_s", rate)
        object.__setattr__(self, "burst", burst)

    def check_request_limit(self, field: str) -> Limit:
        """This limit, if it can be used to limit requests (each costs 1): its ``burst`` in
        ``[1, 1e12]``; else ``ConfigError`` naming ``field`` (e.g. ``"rate_limit"``),
        ``burst`` and the range. Every place that limits requests calls it."""
        request_burst(field, self.burst)
        return self

    def encode(self) -> str:
        return f"{self.rate_per_s!r} {self.burst!r}"

    @classmethod
    def parse(cls, text: str) -> Limit:
        """One limit from a rate string: ``Limit.parse("100/second")`` is
        ``Limit(100, 100)``; ``"1000/hour burst 50"`` refills 1000 an hour and holds 50.
        The grammar (``limits``' rate strings plus an optional burst) is in
        ``distlb._rates``; ``N/period`` holds a burst of ``N`` unless told otherwise."""
        limits = cls.parse_many(text)
        if len(limits) != 1:
            raise ConfigError("rate", f"must be one rate, got {len(limits)}: use parse_many")
        return limits[0]

    @classmethod
    def parse_many(cls, text: str) -> tuple[Limit, ...]:
        """Every limit of ``"10/second; 1000/hour"`` (separated by ``;``, ``,`` or ``|``)."""
        return tuple(cls(rate, burst) for rate, burst in parse_rates(text))

    def __str__(self) -> str:
        return f"{self.rate_per_s:g}/s burst {self.burst:g}"


class _Limiter(Shared):
    """What every limiter adds to a shared primitive: a local twin for the
    ``local`` failure policy (the rate divided by ``expected_processes``) and the
    wait-until-admitted loop of the blocking ``acquire`` helpers.
    """

    def __init__(self, client: Any, name: str, *, expected_processes: int,
                 options: StoreOptions | None, **store: Unpack[StoreKeywords]) -> None:
        super().__init__(client, name, options=options, **store)
        self.expected_processes = integer("expected_processes", expected_processes,
                                          low=1, high=100_000)
        self._local = LocalState(self.clock)
        self._twin = bucket.LocalBuckets(self.expected_processes, self._local)

    def _deadline(self, timeout_s: float) -> float:
        return self.clock() + number("timeout_s", timeout_s, high=86400, low_inclusive=True)

    def _wait_or_raise(self, retry_after_s: float, reason: str, deadline: float) -> Sleep:
        """Sleep until a retry if the deadline allows it, else raise RateLimited."""
        if retry_after_s > deadline - self.clock():
            raise RateLimited(reason, retry_after_s)
        return Sleep(max(retry_after_s, 0.0005))

    def _until_admitted(self, call: Call[D], timeout_s: float,
                        reason: Callable[[D], str]) -> Steps[D]:
        """Repeat ``call`` until it admits, sleeping its ``retry_after_s`` in between,
        or raise ``RateLimited`` once the next retry would pass ``timeout_s``."""
        deadline = self._deadline(timeout_s)
        while True:
            d: D = yield call
            if d.allowed:
                return d
            yield self._wait_or_raise(d.retry_after_s, reason(d), deadline)

    def _bucket_fallback(self, mode: bucket.Mode,
                         specs: list[bucket.BucketSpec]) -> Callable[[], Decision]:
        """The decision while the store is unreachable, per ``on_store_error``."""
        def fallback() -> Decision:
            if self.on_store_error == "local":
                return self._twin.decide(mode, specs)
            return bucket.fixed(self.on_store_error == "fail_open",
                                self._guard.retry_store_after_s, self.on_store_error)
        return fallback


class TokenBucketCore(_Limiter):
    """A token bucket shared by every process: ``rate_per_s`` refill, ``burst`` capacity.

    ``rate_per_s``: tokens per second; ``burst``: capacity (both in [1e-9, 1e12], refill
    time ``burst / rate_per_s`` at most 10 years). The unit is yours, so a burst below 1
    is legal for fractional costs; every call's ``cost`` must then be at most ``burst``
    (the default ``cost=1`` is a ``ConfigError`` naming ``cost`` and ``burst``). To limit
    requests, use a burst of at least 1 (``Limit.check_request_limit``).
    ``expected_processes``: how many processes share it, in [1, 100000]; only the
    ``"local"`` failure policy uses it (each process then allows its share).
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.

    Key: ``<prefix>:{tb:<name>}``, a hash with ``tokens``, ``ts_us``, ``rate``, ``burst``.
    Several rates on one name (``TokenBucket.from_rates(r, "api", "10/s; 1000/hour")``)
    are several buckets under the same hash tag (``:r2``, ``:r3``, ...), checked and
    charged together, all or nothing, in one script call: a request is admitted only
    when every rate has room, and a denial charges none of them.
    """

    kind = "tb"

    def __init__(self, client: Any, name: str, *, rate_per_s: float, burst: float,
                 expected_processes: int = 1, options: StoreOptions | None = None,
                 **store: Unpack[StoreKeywords]) -> None:
        self.limit = Limit(rate_per_s, burst)
        super().__init__(client, name, expected_processes=expected_processes,
                         options=options, **store)
        self._conflict = bucket.warn_conflict_once(f"token bucket {name!r}")
        self._calls: dict[tuple[str, type, float], Call[Decision]] = {}
        self._denials = bucket.DenyCache(self.clock)
        #: Every rate this bucket enforces; the first is ``limit`` (see ``from_rates``).
        self.limits: tuple[Limit, ...] = (self.limit,)

    @classmethod
    def from_rates(cls, client: Any, name: str, rates: str | Sequence[Limit],
                   **kwargs: Any) -> Self:
        """A bucket enforcing several rates at once, e.g. ``"10/second; 1000/hour"`` (a
        rate string, see ``Limit.parse_many``) or a sequence of ``Limit``: a request is
        admitted only when every rate has room, checked and charged in one script call.
        ``kwargs`` are the constructor's other keyword arguments (``options=``, ...)."""
        limits = Limit.parse_many(rates) if isinstance(rates, str) else tuple(rates)
        if not limits or not all(isinstance(lim, Limit) for lim in limits):
            raise ConfigError("rates", "must be a rate string or a non-empty sequence of Limit")
        bucket_ = cls(client, name, rate_per_s=limits[0].rate_per_s, burst=limits[0].burst,
                      **kwargs)
        bucket_._with_rates(limits)
        return bucket_

    def _with_rates(self, limits: tuple[Limit, ...]) -> None:
        """Enforce ``limits`` (at most 16) together under this bucket's name."""
        if not 1 <= len(limits) <= 16:
            raise ConfigError("rates", f"must hold 1 to 16 rates, got {len(limits)}")
        self.limit, self.limits = limits[0], limits
        self._calls.clear()
        self._denials.clear()

    def _keys_of(self) -> list[str]:
        return [self.key] + [_keys.part(self.key, f"r{i}") for i in range(2, len(self.limits) + 1)]

    def _specs(self, cost: float) -> list[bucket.BucketSpec]:
        if len(self.limits) == 1:
            c = check_cost(cost, self.limit.burst)
            return [bucket.BucketSpec(self.key, self.name, self.limit.rate_per_s,
                                      self.limit.burst, c)]
        c = check_cost(cost, min(lim.burst for lim in self.limits), burst_field="smallest burst")
        for lim in self.limits:
            check_amount(c, lim.burst, "cost", "burst")
        return [bucket.BucketSpec(key, f"{self.name} ({lim})", lim.rate_per_s, lim.burst, c)
                for key, lim in zip(self._keys_of(), self.limits, strict=True)]

    def _call(self, mode: bucket.Mode, cost: float) -> Call[Decision]:
        # Calls are immutable: reuse them per (mode, cost), so the hot path builds nothing.
        memo = (mode, type(cost), cost)  # the type keeps True off the entry for 1
        try:
            call = self._calls.get(memo)
        except TypeError:  # unhashable: not a number; check_cost below says so
            call = None
        if call is not None:
            return call
        specs = self._specs(cost)
        call = bucket.plan(mode, specs, limits_key=None, limits_ttl_ms=0,
                           fallback=self._bucket_fallback(mode, specs),
                           on_conflict=self._conflict, owner=self._guard,
                           observe=self._denials.observer(specs[0].cost))
        if len(self._calls) >= 256:
            self._calls.clear()
        self._calls[memo] = call
        return call

    def _try_acquire(self, cost: float) -> Op[Decision]:
        return self._denials.answer(self._call("take", cost), cost)

    def _peek(self, cost: float) -> Op[Decision]:
        return self._call("peek", cost)

    def _acquire(self, cost: float, timeout_s: float) -> Op[Decision]:
        return self._until_admitted(self._call("take", cost), timeout_s,
                                    lambda d: d.limit or self.name)

    def _reset(self) -> Op[int]:
        self._denials.clear()
        return self._delete(self._keys_of())


class LeakyBucketCore(_Limiter):
    """A leaky bucket shared by every process: output leaves evenly at ``rate_per_s``.

    ``capacity`` is how many units may wait for their slot; the longest wait is
    ``capacity / rate_per_s`` seconds. Key: ``<prefix>:{lk:<name>}``, a hash with
    ``next_us``, ``rate``, ``capacity``.

    ``expected_processes``: how many processes share it, in [1, 100000]; only the
    ``"local"`` failure policy uses it (each process then allows its share).
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.
    """

    kind = "lk"

    def __init__(self, client: Any, name: str, *, rate_per_s: float, capacity: float,
                 expected_processes: int = 1, options: StoreOptions | None = None,
                 **store: Unpack[StoreKeywords]) -> None:
        self.rate_per_s, self.capacity = check_limit("rate_per_s", rate_per_s,
                                                     "capacity", capacity)
        super().__init__(client, name, expected_processes=expected_processes,
                         options=options, **store)
        self._leaky_twin = leaky.LocalLeaky(self.expected_processes, self._local)
        self._conflict = bucket.warn_conflict_once(f"leaky bucket {name!r}")
        self._calls: dict[tuple[str, type, float], Call[LeakyDecision]] = {}

    def _call(self, mode: bucket.Mode, cost: float) -> Call[LeakyDecision]:
        # Calls are immutable: reuse them per (mode, cost), so the hot path builds nothing
        # (and the runner packs each command once).
        memo = (mode, type(cost), cost)  # the type keeps True off the entry for 1
        try:
            call = self._calls.get(memo)
        except TypeError:  # unhashable: not a number; check_cost below says so
            call = None
        if call is None:
            call = self._plan(mode, cost)
            if len(self._calls) >= 256:
                self._calls.clear()
            self._calls[memo] = call
        return call

    def _plan(self, mode: bucket.Mode, cost: float) -> Call[LeakyDecision]:
        c = check_cost(cost, self.capacity, burst_field="capacity")

        def fallback() -> LeakyDecision:
            if self.on_store_error == "local":
                return self._leaky_twin.decide(mode, self.key, self.rate_per_s, self.capacity, c)
            if self.on_store_error == "fail_open":
                return LeakyDecision(True, 0.0, 0.0, 0.0, "fail_open")
            return LeakyDecision(False, 0.0, 0.0, self._guard.retry_store_after_s, "fail_closed")

        return leaky.plan(mode, self.key, self.rate_per_s, self.capacity, c,
                          fallback=fallback, on_conflict=self._conflict, owner=self._guard)

    def _try_acquire(self, cost: float) -> Op[LeakyDecision]:
        return self._call("take", cost)

    def _peek(self, cost: float) -> Op[LeakyDecision]:
        return self._call("peek", cost)

    def _acquire(self, cost: float, timeout_s: float) -> Op[LeakyDecision]:
        d = yield from self._until_admitted(self._call("take", cost), timeout_s,
                                            lambda _: f"leaky bucket {self.name}")
        if d.delay_s > 0:  # our slot is reserved; wait for it
            yield Sleep(d.delay_s)
        return d

    def _reset(self) -> Op[int]:
        return self._delete([self.key])


class TrafficShaperCore(_Limiter):
    """A global limit, per-client limits and bandwidth limits, checked together atomically.

    One request is admitted only if every applicable limit admits it, and then
    every one is charged; a denial charges none. Limits set at run time with
    ``set_*`` are stored in Redis and apply to every process at its next call.

    Keys (all under the hash tag ``{ts:<name>}``, so one slot on a cluster):
    ``:global``, ``:c:<client>``, ``:cb:<client>``, ``:bb:<backend>`` (bucket
    hashes), ``:limits`` (shared overrides) and ``:prio`` (priority counters).

    ``global_limit``, ``client_limit`` (each ``client_id``'s default),
    ``client_bandwidth`` and ``backend_bandwidth`` (bytes per second, checked when a
    request passes ``bytes=``): ``Limit(rate_per_s, burst)`` or ``None`` for none.
    ``config_ttl_s``: seconds the shared ``set_*`` overrides live after their last
    change (and after the last admitted request), in [1, 365 days].

    Priority (``try_acquire(..., priority=p)``, an int in [0, 9], higher first): the
    pool's rule and Lua code (``prio_read``/``prio_need``/``prio_count`` in
    ``lua/_common.lua``, ``distlb/_core/admission.py``), applied to the global limit:
    a request of level ``p`` takes from it only while it holds ``cost`` plus a reserve
    of ``priority_reserve x burst x (top - p) / 9`` (``top``: the highest level that
    asked within ``priority_window_s``), and a level not admitted for ``1 /
    (priority_min_share x rate)`` seconds asks without reserve (aging, from the
    constructor's ``global_limit``: none without one). Ranges as the pool's:
    ``priority_reserve`` in [0, 1], ``priority_min_share`` in [0, 0.1],
    ``priority_window_s`` in [0.1, 3600]. The client limit and bandwidth keep no
    reserve (each is one client's own quota, as a pool's ``client_limit``). Calls
    without a priority are unranked: they neither hold nor respect a reserve (the
    path of a shaper used without priorities, unchanged); give every caller a
    priority when priorities matter. Per-level counters: the ``:prio`` hash
    (``<p>:admitted``, ``<p>:denied``, ``<p>:shed``), as a pool's.
    ``expected_processes``: how many processes share it, in [1, 100000]; only the
    ``"local"`` failure policy uses it (each process then allows its share).
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.
    """

    kind = "ts"

    def __init__(self, client: Any, name: str = "default", *, global_limit: Limit | None = None,
                 client_limit: Limit | None = None, client_bandwidth: Limit | None = None,
                 backend_bandwidth: Limit | None = None, config_ttl_s: float = 7 * 86400,
                 priority_reserve: float = 0.5, priority_min_share: float = 0.05,
                 priority_window_s: float = 10.0,
                 expected_processes: int = 1, options: StoreOptions | None = None,
                 **store: Unpack[StoreKeywords]) -> None:
        self.priority_reserve, self.priority_min_share, self.priority_window_s = \
            check_priority_settings(priority_reserve, priority_min_share, priority_window_s)
        for field, value in (("global_limit", global_limit), ("client_limit", client_limit),
                             ("client_bandwidth", client_bandwidth),
                             ("backend_bandwidth", backend_bandwidth)):
            if value is not None and not isinstance(value, Limit):
                raise ConfigError(field,
                                  f"must be a distlb.Limit or None, got {type(value).__name__}")
            if value is not None and field in ("global_limit", "client_limit"):
                value.check_request_limit(field)        # a request costs 1 (the default)
        self.global_limit = global_limit
        self.client_limit = client_limit
        self.client_bandwidth = client_bandwidth
        self.backend_bandwidth = backend_bandwidth
        # At least 1 s: a TTL that rounds to 0 ms would delete the overrides as they are set.
        self.config_ttl_ms = math.ceil(number("config_ttl_s", config_ttl_s, low=1,
                                              low_inclusive=True, high=365 * 86400) * 1000)
        super().__init__(client, name, expected_processes=expected_processes,
                         options=options, **store)
        self.limits_key = _keys.part(self.key, "limits")
        self.prio_key = _keys.part(self.key, "prio")
        self._conflict = bucket.warn_conflict_once(f"traffic shaper {name!r}")
        # Global-only calls (no client, bytes or backend), reused per (mode, cost,
        # priority): the common hot path builds nothing. Their denials are cached (see
        # DenyCache: with a priority, only what holds at every level).
        self._calls: dict[tuple[str, type, float, int | None], Call[Decision]] = {}
        self._denials = bucket.DenyCache(self.clock)

    # -- planning -------------------------------------------------------------------------------

    def _specs(self, client_id: str | None, cost: float, nbytes: float,
               backend: str | None) -> list[bucket.BucketSpec]:
        c = number("cost", cost)
        b = number("bytes", nbytes, low_inclusive=True)
        specs = []

        def add(part: str, label: str, limit: Limit | None, amount: float, field: str) -> None:
            rate, burst = (limit.rate_per_s, limit.burst) if limit else (0.0, 1.0)
            if limit:
                check_amount(amount, burst, "bytes" if "bandwidth" in label else "cost",
                             f"the {label} burst")
            specs.append(bucket.BucketSpec(_keys.part(self.key, part), label, rate, burst, amount,
                                           field))

        add("global", "global", self.global_limit, c, "global")
        if client_id is not None:
            cid = _keys.escape(client_id, "client_id")
            add(f"c:{cid}", f"client:{client_id}", self.client_limit, c, f"c:{cid}")
            if b > 0:
                add(f"cb:{cid}", f"client_bandwidth:{client_id}", self.client_bandwidth, b,
                    f"cb:{cid}")
        if backend is not None and b > 0:
            bid = _keys.escape(backend, "backend")
            add(f"bb:{bid}", f"backend_bandwidth:{backend}", self.backend_bandwidth, b,
                f"bb:{bid}")
        return specs

    def _rank(self, priority_: int | None) -> tuple[str, str] | None:
        """The priority part of a call (``bucket.plan``'s ``rank``), None without one."""
        if priority_ is None:
            return None
        level = check_priority(priority_)
        policy = priority_policy(self.priority_reserve, self.priority_min_share,
                                 self.priority_window_s, self.global_limit)
        return self.prio_key, f"{level} {policy}"

    def _call(self, mode: bucket.Mode, client_id: str | None, cost: float, nbytes: float,
              backend: str | None, priority_: int | None = None) -> Call[Decision]:
        rank = self._rank(priority_)
        specs = self._specs(client_id, cost, nbytes, backend)
        return bucket.plan(mode, specs, limits_key=self.limits_key,
                           limits_ttl_ms=self.config_ttl_ms,
                           fallback=self._bucket_fallback(mode, specs),
                           on_conflict=self._conflict, owner=self._guard,
                           rank=rank)

    def _global_call(self, mode: bucket.Mode, cost: float,
                     priority_: int | None) -> Call[Decision]:
        memo = (mode, type(cost), cost, priority_)  # the type keeps True off the entry for 1
        try:
            call = self._calls.get(memo)
        except TypeError:  # unhashable: not a number; _specs says so
            call = None
        if call is not None and type(priority_) is not bool:
            return call
        rank = self._rank(priority_)
        specs = self._specs(None, cost, 0, None)
        observe = (self._denials.observer(specs[0].cost, ranked=rank is not None)
                   if self.global_limit else None)
        call = bucket.plan(mode, specs, limits_key=self.limits_key,
                           limits_ttl_ms=self.config_ttl_ms,
                           fallback=self._bucket_fallback(mode, specs),
                           on_conflict=self._conflict, owner=self._guard, observe=observe,
                           rank=rank)
        if len(self._calls) >= 256:
            self._calls.clear()
        self._calls[memo] = call
        return call

    def _try_acquire(self, client_id: str | None, cost: float, nbytes: float,
                     backend: str | None, priority_: int | None = None) -> Op[Decision]:
        if client_id is None and backend is None and nbytes == 0 and type(nbytes) is not bool:
            return self._denials.answer(self._global_call("take", cost, priority_), cost)
        return self._call("take", client_id, cost, nbytes, backend, priority_)

    def _peek(self, client_id: str | None, cost: float, nbytes: float,
              backend: str | None, priority_: int | None = None) -> Op[Decision]:
        return self._call("peek", client_id, cost, nbytes, backend, priority_)

    def admission(self, client_id: str | None, nbytes: float = 0,
                  priority_: int | None = None) -> Op[Decision]:
        """The decision for one request of ``client_id`` (None: global only),
        ``nbytes`` bytes and ``priority_`` (a ``Context.priority``; None: unranked), as
        ``try_acquire`` takes it: the internal interface a load balancer admits by (its
        call runs on this shaper's client and guard)."""
        return self._try_acquire(client_id, 1, nbytes, None, priority_)

    def _acquire(self, client_id: str | None, cost: float, nbytes: float, backend: str | None,
                 timeout_s: float, priority_: int | None = None) -> Op[Decision]:
        call = self._call("take", client_id, cost, nbytes, backend, priority_)
        return self._until_admitted(call, timeout_s, lambda d: d.limit)

    # -- shared configuration -------------------------------------------------------------------

    def _config(self, op: str, field: str, value: str = "") -> Op[bool]:
        def parse(reply: Any) -> bool:
            return bool(int(reply))

        # No failure policy: a change the fleet never saw must not look like a limit.
        call = Call(script("config"), (self.limits_key,), (op, field, value, self.config_ttl_ms),
                    parse, no_policy(f"shaper {self.name!r}: limit {field!r} not changed"),
                    self._guard)
        return call

    def _set(self, prefix: str, ident: str, field: str, rate_per_s: float,
             burst: float) -> Op[bool]:
        limit = Limit(rate_per_s, burst)
        if prefix == "c":
            limit.check_request_limit("burst")          # a client's request limit
        return self._config("set", f"{prefix}:{_keys.escape(ident, field)}", limit.encode())

    def _remove(self, prefix: str, ident: str, field: str) -> Op[bool]:
        return self._config("del", f"{prefix}:{_keys.escape(ident, field)}")

    def _set_global(self, rate_per_s: float, burst: float) -> Op[bool]:
        limit = Limit(rate_per_s, burst).check_request_limit("burst")
        self._denials.clear()
        return self._config("set", "global", limit.encode())

    def _limits(self) -> Command[dict[str, Limit]]:
        """Read the shared overrides: StoreUnavailable in an outage (no policy applies)."""
        return Command(("HGETALL", self.limits_key), f"limits of shaper {self.name!r}",
                       parse_limits)

    def _reset_client(self, client_id: str) -> Op[int]:
        cid = _keys.escape(client_id, "client_id")
        return self._delete([_keys.part(self.key, "c", cid), _keys.part(self.key, "cb", cid)])

    def _reset(self) -> Op[int]:
        self._denials.clear()
        return self._delete([_keys.part(self.key, "global"), self.prio_key])


def parse_limits(raw: Mapping[Any, Any]) -> dict[str, Limit]:
    """Decode a limits hash (``HGETALL``) into ``{field: Limit}``, field names unescaped."""
    out = {}
    for k, v in raw.items():
        field = k.decode() if isinstance(k, bytes) else str(k)
        kind, _, ident = field.partition(":")
        try:
            rate, burst = (v.decode() if isinstance(v, bytes) else str(v)).split()
            limit = Limit(float(rate), float(burst))
        except ValueError:  # written by another version, or by hand: show the rest
            log.warning("ignoring unreadable shared limit %r = %r", field, v)
            continue
        out[f"{kind}:{_keys.unescape(ident)}" if ident else kind] = limit
    return out


class PriorityLimiterCore(_Limiter):
    """A shared token bucket whose waiters are admitted in priority order, with aging.

    Priorities are ints in ``[0, levels)``; higher is served first. Each level has
    its own queue depth. Aging: a request that has waited ``aging_s`` seconds
    counts as one level higher, so a steady stream of high-priority work delays
    low-priority work but never starves it. Across all processes only the head of
    the queue may take tokens.

    Keys (hash tag ``{pq:<name>}``): the bucket hash, ``:queue`` (zset),
    ``:leases`` (zset), ``:depth`` (hash level -> waiters).

    ``rate_per_s``, ``burst``: the bucket, as ``TokenBucket``. ``levels``: how many
    priorities, in [1, 1000]. ``max_queue_depth``: waiters allowed per level (an int
    for all, or one per level), in [0, 1e7]. ``aging_s``: seconds of waiting worth one
    level, in [0.001, 86400]. ``lease_s``: seconds a waiter's place is kept without
    its process renewing it (a dead process leaves the queue), in [0.05, 3600].
    ``expected_processes``: how many processes share it, in [1, 100000]; only the
    ``"local"`` failure policy uses it (each process then allows its share).
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.
    """

    kind = "pq"

    def __init__(self, client: Any, name: str, *, rate_per_s: float, burst: float, levels: int = 10,
                 max_queue_depth: int | Sequence[int] = 1000, aging_s: float = 1.0,
                 lease_s: float = 2.0, expected_processes: int = 1,
                 options: StoreOptions | None = None, **store: Unpack[StoreKeywords]) -> None:
        self.limit = Limit(rate_per_s, burst)
        self.levels = integer("levels", levels, low=1, high=1000)
        if isinstance(max_queue_depth, int):
            depths: list[object] = [max_queue_depth] * self.levels
        elif isinstance(max_queue_depth, list | tuple):
            depths = list(max_queue_depth)
        else:
            raise ConfigError("max_queue_depth", "must be an int or a list with one int per level")
        if len(depths) != self.levels:
            raise ConfigError("max_queue_depth", f"must have one entry per level ({self.levels})")
        self.max_queue_depth = tuple(integer("max_queue_depth", d, low=0, high=10**7)
                                     for d in depths)
        self.aging_s = number("aging_s", aging_s, low=0.001, high=86400)
        self.lease_s = number("lease_s", lease_s, low=0.05, high=3600)
        super().__init__(client, name, expected_processes=expected_processes,
                         options=options, **store)
        self.keys = (self.key, _keys.part(self.key, "queue"), _keys.part(self.key, "leases"),
                     _keys.part(self.key, "depth"))

    def _call(self, mode: priority.Mode, ticket: str, level: int,
              cost: float) -> Call[PriorityDecision]:
        def fallback() -> PriorityDecision:
            if self.on_store_error == "local":
                spec = bucket.BucketSpec(self.key, self.name, self.limit.rate_per_s,
                                         self.limit.burst, cost)
                d = self._twin.decide("take" if mode != "cancel" else "peek", [spec])
                return PriorityDecision(d.allowed, "admitted" if d.allowed else "busy",
                                        d.retry_after_s, -1, d.remaining, "local")
            ok = self.on_store_error == "fail_open" and mode != "cancel"
            return PriorityDecision(ok, "admitted" if ok else "store_unavailable",
                                    0.0 if ok else self._guard.retry_store_after_s, -1,
                                    math.inf if ok else 0.0, self.on_store_error)

        return priority.plan(mode, self.keys, ticket=ticket, level=level,
                             rate_per_s=self.limit.rate_per_s, burst=self.limit.burst, cost=cost,
                             max_depth=self.max_queue_depth[level], aging_s=self.aging_s,
                             lease_ms=int(self.lease_s * 1000), fallback=fallback,
                             owner=self._guard)

    def _check(self, priority_: int, cost: float) -> tuple[int, float]:
        level = integer("priority", priority_, low=0, high=self.levels - 1)
        return level, check_cost(cost, self.limit.burst)

    def _try_acquire(self, priority_: int, cost: float) -> Op[PriorityDecision]:
        level, c = self._check(priority_, cost)
        return self._call("try", uuid.uuid4().hex, level, c)

    def _acquire(self, priority_: int, cost: float, timeout_s: float) -> Op[PriorityDecision]:
        level, c = self._check(priority_, cost)
        deadline = self._deadline(timeout_s)
        ticket = uuid.uuid4().hex
        try:
            while True:
                d: PriorityDecision = yield self._call("poll", ticket, level, c)
                if d.allowed:
                    return d
                if d.status == "queue_full":
                    raise RateLimited(f"priority {level} queue of {self.name} full",
                                      d.retry_after_s)
                # Poll well within the lease so a live waiter never loses its place.
                pause = min(d.retry_after_s, self.lease_s / 3)
                yield self._wait_or_raise(pause, f"{self.name} (priority {level})", deadline)
        except GeneratorExit:  # abandoned without a chance to clean up; the lease expires
            raise
        except BaseException:  # timeout, cancellation, error: give up our place now
            yield self._call("cancel", ticket, level, c)
            raise

    def _reset(self) -> Op[int]:
        return self._delete(list(self.keys))
