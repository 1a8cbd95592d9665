"""Decisions: what every limiter returns. A denial is a value, not an exception.

``source`` tells where a decision came from: ``"store"`` (the shared state in
Redis), ``"cache"`` (a denial the store gave this process earlier and that still
holds: a token bucket only refills with time, so no round trip was needed), or,
while the store is unreachable, the limiter's failure policy: ``"fail_open"``,
``"fail_closed"`` or ``"local"`` (an in-process twin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit's view of a request.

    Amounts are in the limit's own unit: requests, or bytes for bandwidth limits.
    """

    label: str              #: which limit: "global", "client:alice", "backend_bandwidth:n1" ...
    allowed: bool           #: whether this limit alone would admit the request
    remaining: float        #: tokens left (after the charge when the request was admitted)
    retry_after_s: float    #: seconds until this limit would admit it; 0 if it does; inf if never
    reset_after_s: float    #: seconds until the bucket is full again
    rate_per_s: float       #: the rate in force (shared overrides included)
    burst: float            #: the capacity in force


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a token-bucket check (``TokenBucket``, ``TrafficShaper``).

    ``limit`` is the limit that decided: when denied, the denying limit with the
    longest wait; when allowed, the limit with the least room left. ``limits``
    has every limit that was checked.
    """

    allowed: bool
    remaining: float
    retry_after_s: float
    reset_after_s: float
    limit: str = ""
    limits: tuple[LimitState, ...] = ()
    source: str = "store"

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def denied_by(self) -> tuple[str, ...]:
        """Labels of every limit that denied the request (empty when allowed)."""
        return tuple(s.label for s in self.limits if not s.allowed)

    @property
    def explanation(self) -> str:
        """One line for logs and error pages: what decided, and when to retry."""
        if self.source not in ("store", "cache"):
            verdict = "allowed" if self.allowed else "denied"
            return f"{verdict} by failure policy {self.source} (store unreachable)"
        if self.allowed:
            return f"allowed; {self.limit or 'no limit'} has {self.remaining:g} left"
        parts = []
        for s in self.limits:
            if not s.allowed:
                when = "never (cost exceeds burst)" if math.isinf(s.retry_after_s) \
                    else f"in {s.retry_after_s:.3f}s"
                parts.append(f"{s.label} ({s.rate_per_s:g}/s, burst {s.burst:g}: "
                             f"{s.remaining:g} left, admits {when})")
        return "denied by " + "; ".join(parts)

    @staticmethod
    def from_limits(limits: tuple[LimitState, ...], source: str = "store") -> Decision:
        """Combine per-limit states: allowed only if every limit allows."""
        if len(limits) == 1:  # the common case, kept cheap: it is on every request's path
            s = limits[0]
            return Decision(s.allowed, s.remaining, s.retry_after_s, s.reset_after_s, s.label,
                            limits, source)
        if not limits:
            return Decision(True, math.inf, 0.0, 0.0, "", (), source)
        denied = [s for s in limits if not s.allowed]
        if denied:
            worst = max(denied, key=lambda s: s.retry_after_s)
            return Decision(False, worst.remaining, worst.retry_after_s,
                            max(s.reset_after_s for s in limits), worst.label, limits, source)
        tight = min(limits, key=lambda s: s.remaining / s.burst)
        return Decision(True, tight.remaining, 0.0, max(s.reset_after_s for s in limits),
                        tight.label, limits, source)


@dataclass(frozen=True, slots=True)
class LeakyDecision:
    """The outcome of a ``LeakyBucket`` request.

    When allowed, the request owns a departure slot ``delay_s`` seconds from now
    (``acquire`` sleeps that long for you). ``queued`` is the queue length after
    the call, in units (requests or bytes).
    """

    allowed: bool
    delay_s: float
    queued: float
    retry_after_s: float
    source: str = "store"

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class PriorityDecision:
    """The outcome of one poll of a ``PriorityLimiter``.

    ``status`` is ``"admitted"``, ``"queued"`` (waiting; poll again after
    ``retry_after_s``), ``"queue_full"`` (this level's queue is at its depth),
    ``"busy"`` / ``"queued_ahead"`` (non-blocking try found no tokens / others
    waiting ahead), or ``"cancelled"``. ``position`` is the 0-based rank among
    waiters, -1 when not queued.
    """

    allowed: bool
    status: str
    retry_after_s: float
    position: int
    remaining: float
    source: str = "store"

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class Attempt:
    """A breaker's answer to ``can_attempt()``: may this call go to the backend?

    ``permit`` is set when the breaker is half-open and this call is one of its
    rationed probes; hand the attempt back to ``record_success``/``record_failure``
    so the probe slot is released. ``source`` is ``"cache"`` when the answer came
    from this process's up-to-date view (no round trip), ``"store"`` when the
    script decided, or the failure policy while the store is unreachable.

    ``period`` (a call admitted while closed): the closed period it was admitted in,
    as this process's view knew it (the server time, in µs, of the breaker's last move
    to closed; 0: never opened), or None if unknown. Handed back with the result, it
    lets the store drop a late result of a call admitted before a trip, once the
    breaker closed again. Knowing it costs no round trip: the view learns each period
    from replies and events. For ``source="local"`` it numbers the in-process twin's
    closed periods instead.
    """

    allowed: bool
    state: str
    permit: str | None = None
    retry_after_s: float = 0.0
    source: str = "store"
    period: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A breaker's shared state, as ``state()`` reads it.

    ``retry_after_s``: while open, seconds until it turns half-open; while
    half-open with every probe slot taken, until the first slot frees. The
    ``calls``/``error_rate``/``baseline`` fields describe the adaptive rule's
    window (zero and None for the consecutive-failure rule, and outside calls
    that record a result).
    """

    name: str
    state: str                  #: "closed", "open" or "half_open"
    forced: str | None          #: "open" or "closed" while forced, else None
    failures: int               #: consecutive failures (closed)
    successes: int              #: probe successes so far (half-open)
    probes_in_flight: int       #: probe permits handed out and not yet returned or expired
    retry_after_s: float
    version: int                #: server time (us) of the last change; orders states and events
    calls: int = 0
    error_rate: float = 0.0
    baseline: float | None = None
    allowed: bool = False       #: for attempts: whether the call may go ahead
    permit: str | None = None   #: for attempts: the probe permit, if any
    source: str = "store"
    throttled: int = 0          #: requests shed by client-side throttling in the window
    #: the current closed period (server us of the last move to closed, 0: never opened);
    #: None if unknown (the failure policy answered)
    period: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change seen by this process: from its own call, or from another's event."""

    name: str
    from_state: str
    to_state: str
    version: int
    #: "call" (this process's call, reported from its reply), "event" (pub/sub: another
    #: process's call, or this one's when the event is read before the reply), or "local"
    #: (the in-process twin, while the store is unreachable; version is then 0)
    origin: str


# -- fast constructors for the decision path ---------------------------------------------------
# A frozen dataclass's __init__ sets each field through object.__setattr__; these set the
# slots directly (the same result, about half the time). Only for hot paths that build
# a result per request (bucket.lua replies); everything else uses the constructors.

_new = object.__new__
_LS = tuple(LimitState.__dict__[f].__set__ for f in (
    "label", "allowed", "remaining", "retry_after_s", "reset_after_s", "rate_per_s", "burst"))
_D = tuple(Decision.__dict__[f].__set__ for f in (
    "allowed", "remaining", "retry_after_s", "reset_after_s", "limit", "limits", "source"))


def one_limit_decision(label: str, allowed: bool, remaining: float, retry_after_s: float,
                       reset_after_s: float, rate_per_s: float, burst: float) -> Decision:
    """``Decision.from_limits((LimitState(...),))`` for one limit, built without the
    frozen-dataclass ``__init__`` (equal to it field for field)."""
    a, b, c, d, e, f, g = _LS
    st = _new(LimitState)
    a(st, label)
    b(st, allowed)
    c(st, remaining)
    d(st, retry_after_s)
    e(st, reset_after_s)
    f(st, rate_per_s)
    g(st, burst)
    a, b, c, d, e, f, g = _D
    dec = _new(Decision)
    a(dec, allowed)
    b(dec, remaining)
    c(dec, retry_after_s)
    d(dec, reset_after_s)
    e(dec, label)
    f(dec, (st,))
    g(dec, "store")
    return dec
