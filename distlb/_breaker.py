"""Circuit breakers without I/O: configuration, keys, the local view, operations.

``distlb.breaker`` (sync) and ``distlb.aio.breaker`` (generated) drive these.
A breaker is one breaker for the whole fleet: its state lives in Redis and
every transition is one ``breaker.lua`` call on the server clock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from distlb import _keys, _observe
from distlb._core import breaker as bk
from distlb._core.bus import Subscriber
from distlb._core.guard import no_policy
from distlb._core.ops import Call, Done, Invoke, Op, Outcome, Steps, steps
from distlb._shared import Shared, StoreKeywords, StoreOptions, merge, store_options
from distlb._validate import integer, number, window
from distlb.errors import CircuitOpen, ConfigError
from distlb.results import Attempt, BreakerState, Transition

log = logging.getLogger("distlb")
Listener = Callable[[Transition], None]


def _exception_types(field: str, value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise ConfigError(field, "must be an exception class or a tuple of them")
    return types


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """A circuit breaker's own configuration, validated once; the store settings
    (prefix, failure policy, ...) are ``StoreOptions``.

    ``CircuitBreaker(r, "api", settings=BreakerSettings(...))`` or the same fields as
    keywords (giving a field both ways is a ``ConfigError`` naming it); a
    ``LoadBalancer(breaker=BreakerSettings(...))`` gives them to every backend's
    breaker as they are.

    * ``failure_threshold``: consecutive failures (fleet-wide) that open a
      ``CircuitBreaker``, in [1, 1e6]. ``AdaptiveCircuitBreaker`` trips on its error
      rate instead and refuses a non-default value.
    * ``open_timeout_s``: seconds open before turning half-open, in [0.001, 86400].
    * ``success_threshold``: half-open probe successes that close it, in [1, 10000].
    * ``half_open_max_requests``: probe calls allowed in total, fleet-wide, per
      half-open period, in [success_threshold, 10000].
    * ``probe_lease_s``: seconds after which the slot of a probe whose process died
      is given back, in [0.001, 86400].
    * ``failure_on``, ``ignore``: exception classes (or tuples) counted as failures,
      and never counted at all (``ignore`` wins), for ``call``/``guard``/decorator.
    * ``slow_call_s``: a call that succeeds but takes longer counts as a failure;
      ``None`` (default): no slow-call rule. Seconds, in (0, 86400].
    * ``max_staleness_s``: without a healthy pub/sub subscription, how long (seconds,
      in [0, 3600]) the local view of a closed breaker is trusted without a round trip.
    * ``subscribe``: follow changes by pub/sub (``False``: poll within ``max_staleness_s``).
    * ``ttl_s``: seconds an idle breaker's keys live, at least
      ``open_timeout_s + probe_lease_s`` and at most a year.
    """

    failure_threshold: int = 5
    open_timeout_s: float = 30.0
    success_threshold: int = 3
    half_open_max_requests: int = 5
    probe_lease_s: float = 30.0
    failure_on: Any = Exception
    ignore: Any = ()
    slow_call_s: float | None = None
    max_staleness_s: float = 1.0
    subscribe: bool = True
    ttl_s: float = 86400.0

    def __post_init__(self) -> None:
        # The one validation of the breaker's options (frozen: checked values set directly).
        def put(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        put("failure_threshold", integer("failure_threshold", self.failure_threshold,
                                         low=1, high=1_000_000))
        put("open_timeout_s", number("open_timeout_s", self.open_timeout_s,
                                     low=0.001, high=86400))
        put("success_threshold", integer("success_threshold", self.success_threshold,
                                         low=1, high=10_000))
        put("half_open_max_requests", integer("half_open_max_requests",
                                              self.half_open_max_requests,
                                              low=self.success_threshold, high=10_000))
        put("probe_lease_s", number("probe_lease_s", self.probe_lease_s, low=0.001, high=86400))
        put("failure_on", _exception_types("failure_on", self.failure_on))
        put("ignore", _exception_types("ignore", self.ignore))
        put("slow_call_s", None if self.slow_call_s is None
            else number("slow_call_s", self.slow_call_s, high=86400))
        put("max_staleness_s", number("max_staleness_s", self.max_staleness_s,
                                      low_inclusive=True, high=3600))
        if not isinstance(self.subscribe, bool):
            raise ConfigError("subscribe", "must be True or False")
        put("ttl_s", number("ttl_s", self.ttl_s, low=self.open_timeout_s + self.probe_lease_s,
                            high=365 * 86400))

    def replace(self, **changes: Unpack[BreakerKeywords]) -> BreakerSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


class BreakerKeywords(TypedDict, total=False):
    """The fields of ``BreakerSettings`` as constructor keywords (for type checkers; a
    test keeps the two lists equal)."""

    failure_threshold: int
    open_timeout_s: float
    success_threshold: int
    half_open_max_requests: int
    probe_lease_s: float
    failure_on: Any
    ignore: Any
    slow_call_s: float | None
    max_staleness_s: float
    subscribe: bool
    ttl_s: float


class BreakerAndStoreKeywords(BreakerKeywords, StoreKeywords, total=False):
    """A breaker constructor's keywords: its settings' fields and the store's."""


def _split(settings: BreakerSettings | None, options: StoreOptions | None,
           keywords: dict[str, Any]) -> tuple[BreakerSettings, StoreOptions]:
    """The breaker's settings and store options, from the objects or the keywords."""
    breaker_fields = {f.name for f in dataclasses.fields(BreakerSettings)}
    mine = {k: v for k, v in keywords.items() if k in breaker_fields}
    store = {k: v for k, v in keywords.items() if k not in breaker_fields}
    return (merge(BreakerSettings, settings, "settings", mine),
            store_options(options, store))


class BreakerBase(Subscriber, Shared):
    """The state machine both breakers share; subclasses pick the trip rule.

    ``on_store_error``: ``"fail_open"`` lets calls through, ``"fail_closed"``
    refuses them, ``"local"`` runs an in-process breaker (consecutive failures,
    the same timeouts) until the store is back.
    """

    kind = "cb"
    #: The pool whose backend this breaker guards (set by the load balancer): metrics then
    #: label it by pool, not by backend id, unless ``metrics.enable(id_labels=True)``.
    metrics_pool: str | None = None

    def __init__(self, client: Any, name: str, *, rule: str, local_threshold: int,
                 settings: BreakerSettings, options: StoreOptions) -> None:
        super().__init__(client, name, options=options)
        self.settings = settings
        # The settings' fields, as attributes (the public names since the first release).
        self.open_timeout_s = settings.open_timeout_s
        self.success_threshold = settings.success_threshold
        self.half_open_max_requests = settings.half_open_max_requests
        self.probe_lease_s = settings.probe_lease_s
        self.failure_on: tuple[type[BaseException], ...] = settings.failure_on
        self.ignore: tuple[type[BaseException], ...] = settings.ignore
        self.slow_call_s = settings.slow_call_s
        self.max_staleness_s = settings.max_staleness_s
        self.subscribe = settings.subscribe
        ttl = settings.ttl_s
        clock = self.clock
        self.keys = (self.key, _keys.part(self.key, "probes"), _keys.part(self.key, "window"))
        self.channel = _keys.events_channel(self.prefix)
        self._config = bk.Config(
            rule, f"{math.ceil(self.open_timeout_s * 1000)} {self.success_threshold} "
                  f"{self.half_open_max_requests} {math.ceil(self.probe_lease_s * 1000)} "
                  f"{math.ceil(ttl * 1000)}", self.open_timeout_s)
        self._view = bk.View(name, self.open_timeout_s, self.max_staleness_s, clock)
        self._twin = bk.LocalBreaker(local_threshold, self.open_timeout_s,
                                     self.success_threshold, clock,
                                     on_transition=self._local_transition)
        self._listeners: list[Listener] = []

    # -- events and the local view ---------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(Transition)`` once for every state change this process sees: those
        its own calls make (even its first call), every other process's (through pub/sub, on
        the subscriber thread), and the local twin's while the store is unreachable."""
        self._listeners.append(listener)

    @property
    def known_state(self) -> str | None:
        """The state this process last saw (``"closed"``, ``"open"``, ``"half_open"``), without
        a round trip; None before it saw any. ``state()`` reads the store."""
        return self._view.state

    def local_attempt(self, now: float) -> Attempt | None:
        """The answer to an attempt at ``now`` that this process can give without a round
        trip (its view is fresh enough: closed, or open and not yet due a probe), else
        None. For the load balancer's breakers: which backends refuse calls now."""
        return self._view.fast_attempt(now, self._subscribed_since())

    # -- the operations a load balancer drives a backend's breaker by ----------------------
    # (its execute runs them in its own flow, each on this breaker's client and guard;
    # the user's API is can_attempt / record_* / guard above and in the shells)

    def attempt_op(self) -> Op[Attempt]:
        """``can_attempt`` as an operation."""
        return self._attempt()

    def outcome_op(self, attempt: Attempt | None, verdict: str) -> Op[Any]:
        """Record ``classify``'s verdict (``"success"``, ``"failure"``, ``"ignored"``) for a
        call ``attempt`` admitted."""
        return self._outcome(attempt, verdict)

    def unadmitted_op(self, failed: bool) -> Op[Any]:
        """Record the result of a call that never asked the breaker (a permit is asked
        first, so a half-open breaker still rations its probes)."""
        return self._record_unadmitted(failed)
    def _subscription(self) -> float | None:
        """The healthy subscription now, if this object already joined a bus (joins none)."""
        return self._bus.subscribed_since() if self._bus is not None else None

    def _on_event(self, event: dict[str, Any]) -> None:
        version = int(event["version"])     # a string: exact (a JSON number loses 100 us)
        state = str(event["state"])
        wait = event.get("half_open_in_ms")
        half_open_in = wait / 1000 if isinstance(wait, (int, float)) and wait >= 0 else None
        changes: tuple[bk.Change, ...] = ()
        if event.get("event") == "transition" and "from" in event and "to" in event:
            changes = ((str(event["from"]), str(event["to"]), version),)
        raw_period = event.get("period")        # a string, like version; absent: unknown
        period = int(raw_period) if isinstance(raw_period, str) and raw_period.isdigit() \
            else None
        self._notify(self._view.apply(state, event.get("forced") or None,
                                      int(event["failures"]), version, half_open_in, "event",
                                      changes, self._subscription(), period))

    def _observe(self, st: BreakerState, changes: tuple[bk.Change, ...] = (),
                 subscription: float | None = None) -> None:
        wait = st.retry_after_s if st.state == "open" and st.forced is None else None
        self._notify(self._view.apply(st.state, st.forced, st.failures, st.version, wait,
                                      "call", changes, subscription, st.period))

    def _local_transition(self, from_state: str, to_state: str) -> None:
        self._notify([Transition(self.name, from_state, to_state, 0, "local")])

    def _notify(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            log.info("circuit %r %s -> %s (%s)", self.name, transition.from_state,
                     transition.to_state, transition.origin)
            _observe.breaker(self.name, transition.from_state, transition.to_state,
                             self.metrics_pool)
            for listener in self._listeners:
                try:
                    listener(transition)
                except Exception:
                    log.exception("breaker listener failed")

    # -- planning ----------------------------------------------------------------------------

    def _plan(self, op: bk.BreakerOp, arg: str, fallback: Callable[[], BreakerState],
              period: int | None = None) -> Call[BreakerState]:
        shed = self._take_shed() if op in ("success", "failure") else 0
        # The subscription up before the call: if it is still the same one when the reply
        # is read, no event published meanwhile was missed.
        before = self._subscription()

        def hook(st: BreakerState, changes: tuple[bk.Change, ...]) -> None:
            now = self._subscription()
            self._observe(st, changes, before if now == before else None)

        return bk.plan(op, self.keys, name=self.name, arg=arg, channel=self.channel,
                       config=self._config, parse_hook=hook, fallback=fallback, shed=shed,
                       period=period, owner=self._guard)

    def _take_shed(self) -> int:
        """Requests shed locally since the last result sent (client-side throttling)."""
        return 0

    def _policy_state(self, allowed: bool) -> BreakerState:
        return BreakerState(self.name, "closed" if allowed else "open", None, 0, 0, 0,
                            0.0 if allowed else self._guard.retry_store_after_s, 0,
                            allowed=allowed, source=self.on_store_error)

    def _attempt_fallback(self) -> BreakerState:
        if self.on_store_error == "local":
            a = self._twin.attempt()
            st = self._twin.snapshot(self.name)
            return BreakerState(self.name, a.state, None, st.failures, st.successes,
                                st.probes_in_flight, a.retry_after_s, 0, allowed=a.allowed,
                                permit=a.permit, source="local", period=a.period)
        return self._policy_state(self.on_store_error == "fail_open")

    def _record_fallback(self, failed: bool, permit: str,
                         period: int | None) -> Callable[[], BreakerState]:
        def fallback() -> BreakerState:
            if self.on_store_error == "local":
                self._twin.record(failed, permit, period)
                return self._twin.snapshot(self.name)
            return self._policy_state(self.on_store_error == "fail_open")
        return fallback

    def _attempt(self) -> Op[Attempt]:
        fast = self._view.fast_attempt(self.clock(), self._subscribed_since())
        if fast is not None:
            return Done(fast)
        return self._attemptsteps()

    def _attemptsteps(self) -> Steps[Attempt]:
        st: BreakerState = yield self._plan("attempt", uuid.uuid4().hex, self._attempt_fallback)
        # A closed admission carries its closed period (the store's, or the twin's).
        period = st.period if st.allowed and st.permit is None else None
        return Attempt(st.allowed, st.state, st.permit, st.retry_after_s, st.source, period)

    def _result_is_news(self, failed: bool, attempt: Attempt | None) -> bool:
        """Whether a result must reach the store; the adaptive breaker records every one."""
        if failed or (attempt is not None and attempt.permit):
            return True
        return self._view.success_is_news(self.clock(), self._subscribed_since())

    def _record(self, failed: bool, attempt: Attempt | None) -> Op[Any]:
        if attempt is not None and not isinstance(attempt, Attempt):
            raise ConfigError("attempt", "must be the Attempt that can_attempt() returned")
        if not self._result_is_news(failed, attempt):
            return Done(None)
        permit = attempt.permit if attempt is not None and attempt.permit else ""
        # The closed period the call was admitted in: the store's (a reply or the view) goes
        # to the store, the twin's only to the twin. Unknown (no attempt, or the failure
        # policy answered): the result counts in whatever closed period is current.
        period = attempt.period if attempt is not None and not permit else None
        local = attempt is not None and attempt.source == "local"
        return self._plan("failure" if failed else "success", permit,
                          self._record_fallback(failed, permit, period if local else None),
                          None if local else period)

    def _record_unadmitted(self, failed: bool) -> Op[Any]:
        """Record the result of a call that never asked the breaker (the pool's
        ``record_result`` after ``select_backend``, which takes no permit).

        A result without a permit counts only while closed (``breaker.lua``), so this
        asks for an attempt first: closed, the result counts as usual; half-open, it
        counts as a probe if a probe permit is free now (such results are rationed like
        probes); open, or with every permit taken, it is not counted. Known closed (or
        known open) costs no extra round trip."""
        fast = self._view.fast_attempt(self.clock(), self._subscribed_since())
        if fast is not None:
            return self._record(failed, fast) if fast.allowed else Done(None)
        return self._record_unadmitted_steps(failed)

    def _record_unadmitted_steps(self, failed: bool) -> Steps[Any]:
        attempt = yield from self._attemptsteps()
        if attempt.allowed:
            yield from steps(self._record(failed, attempt))
        return None

    def _state(self) -> Call[BreakerState]:
        return self._plan("state", "", lambda: self._twin.snapshot(self.name)
                          if self.on_store_error == "local"
                          else self._policy_state(self.on_store_error == "fail_open"))

    def _force(self, value: str) -> Call[BreakerState]:
        return self._plan("force", value,
                          no_policy(f"breaker {self.name!r} not {value or 'reset'}"))

    # -- calling through the breaker ---------------------------------------------------------

    def classify(self, error: BaseException | None, duration_s: float) -> str:
        """``"failure"``: an exception of ``failure_on`` not in ``ignore``, or a call slower
        than ``slow_call_s``. ``"ignored"``: any other exception (the caller's problem, not
        the backend's): it counts as neither. Else ``"success"``."""
        if error is not None:
            if isinstance(error, self.failure_on) and not isinstance(error, self.ignore):
                return "failure"
            return "ignored"
        if self.slow_call_s is not None and duration_s > self.slow_call_s:
            return "failure"
        return "success"

    def _outcome(self, attempt: Attempt | None, verdict: str) -> Op[Any]:
        """Record a classified outcome. An ignored one is not recorded, except that a
        half-open probe still returns its slot as a success (the backend did answer)."""
        if verdict == "ignored" and not (attempt is not None and attempt.permit):
            return Done(None)
        return self._record(verdict == "failure", attempt)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Steps[Any]:
        attempt = yield from steps(self._attempt())
        if not attempt.allowed:
            raise CircuitOpen(self.name, attempt.state, attempt.retry_after_s)
        outcome: Outcome = yield Invoke(fn, args, kwargs)
        yield from steps(self._outcome(attempt, self.classify(outcome.error,
                                                               outcome.duration_s)))
        if outcome.error is not None:
            raise outcome.error
        return outcome.value


class CircuitBreakerCore(BreakerBase):
    """A circuit breaker shared by every process (closed / open / half-open).

    Closed: calls go through; ``failure_threshold`` consecutive failures (across
    the fleet; a success resets the count) open it. Open: calls are refused for
    ``open_timeout_s``, then it turns half-open. Half-open: at most
    ``half_open_max_requests`` probe calls in total across all processes;
    ``success_threshold`` probe successes close it, any probe failure opens it
    again. A probe whose process dies frees its slot after ``probe_lease_s``.

    While the breaker is known closed, ``can_attempt()`` costs no round trip:
    every change is pushed to every process by pub/sub, and without a healthy
    subscription the local view is trusted for at most ``max_staleness_s``.

    ``settings``: a ``BreakerSettings`` (``failure_threshold``, ``open_timeout_s``,
    ``success_threshold``, ``half_open_max_requests``, ``probe_lease_s``,
    ``failure_on``, ``ignore``, ``slow_call_s``, ``max_staleness_s``, ``subscribe``,
    ``ttl_s``: see there), or those fields as keywords.
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.

    Keys: ``<prefix>:{cb:<name>}`` (hash: state, forced, failures, successes,
    opened_us, version) and ``:probes`` (zset of probe permits).
    """

    def __init__(self, client: Any, name: str, *, settings: BreakerSettings | None = None,
                 options: StoreOptions | None = None,
                 **keywords: Unpack[BreakerAndStoreKeywords]) -> None:
        settings, options = _split(settings, options, dict(keywords))
        self.failure_threshold = threshold = settings.failure_threshold
        super().__init__(client, name, rule=f"count {threshold}", local_threshold=threshold,
                         settings=settings, options=options)


class AdaptiveCircuitBreakerCore(BreakerBase):
    """A breaker that trips on the fleet's error rate, against the backend's own normal.

    Every result is counted in a sliding window of ``window_s`` seconds split in
    ``buckets`` buckets, shared by all processes. It opens when the window holds
    at least ``min_calls`` calls and

        error_rate > max(error_rate_threshold, baseline_factor x baseline)

    where ``baseline`` is a slow exponentially weighted average of the error rate
    of each completed bucket while closed (weight ``baseline_alpha`` per bucket),
    learning only from buckets that would not have tripped it (rate at most
    ``max(error_rate_threshold, baseline_factor x baseline)``): an incident must
    not teach the breaker that it is normal. A backend that normally fails 8% of
    calls trips at 16% with the defaults; one that normally never fails trips at
    10%. Open and half-open work as in ``CircuitBreaker``. Each recorded result
    is one script call.

    ``throttle_k`` switches to client-side adaptive throttling (Google SRE book,
    "Handling Overload"): instead of opening, the breaker sheds each request with
    probability ``max(0, (requests - throttle_k x accepts) / (requests + 1))`` over
    the shared window, where accepts are calls that succeeded and requests also
    count those shed (sent along with the next recorded result). Healthy: nothing
    is shed; at 100% errors nearly everything is, yet a trickle still probes the
    backend; in between, shedding follows the error rate.

    ``error_rate_threshold``: in (0, 1]; ``window_s``: seconds, in [0.01, 86400], in
    ``buckets`` (at least 1 ms each); ``min_calls``: at least 1; ``baseline_factor``:
    in [1, 1000]; ``baseline_alpha``: in (0, 1]; ``throttle_k``: in [1, 100] or
    ``None`` (no throttling); ``rng``: a ``random.Random`` for the shedding draws
    (tests). ``settings``: a ``BreakerSettings`` for the open and half-open states,
    as ``CircuitBreaker`` (its ``failure_threshold`` does not apply and is refused),
    or its fields as keywords.
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.

    Keys: as ``CircuitBreaker``, plus ``:window`` (hash ``<bucket>:c`` calls,
    ``<bucket>:e`` errors, ``<bucket>:t`` shed requests).
    """

    def __init__(self, client: Any, name: str, *, error_rate_threshold: float = 0.1,
                 window_s: float = 60.0, buckets: int = 10, min_calls: int = 20,
                 baseline_factor: float = 2.0, baseline_alpha: float = 0.05,
                 throttle_k: float | None = None, rng: random.Random | None = None,
                 settings: BreakerSettings | None = None, options: StoreOptions | None = None,
                 **keywords: Unpack[BreakerAndStoreKeywords]) -> None:
        settings, options = _split(settings, options, dict(keywords))
        if settings.failure_threshold != BreakerSettings().failure_threshold:
            raise ConfigError("failure_threshold",
                              "an AdaptiveCircuitBreaker trips on its error rate "
                              "(error_rate_threshold, min_calls), not on a count: leave it unset")
        self.error_rate_threshold = number("error_rate_threshold", error_rate_threshold, high=1)
        self.window_s = number("window_s", window_s, low=0.01, high=86400)
        self.buckets = integer("buckets", buckets, low=1, high=1000)
        window("window_s", self.window_s, self.buckets)
        self.min_calls = integer("min_calls", min_calls, low=1, high=10**9)
        self.baseline_factor = number("baseline_factor", baseline_factor, low=1,
                                      low_inclusive=True, high=1000)
        self.baseline_alpha = number("baseline_alpha", baseline_alpha, high=1)
        self.throttle_k = None if throttle_k is None else number(
            "throttle_k", throttle_k, low=1, low_inclusive=True, high=100)
        self._rng = rng if rng is not None else random.Random()
        self._shed = 0
        self._shed_lock = threading.Lock()
        self._window = (0, 0.0, 0)          # calls, error rate, shed: from the last reply
        # Throttling sheds instead of opening: a threshold of 1 can never be exceeded.
        threshold = 1.0 if self.throttle_k is not None else self.error_rate_threshold
        rule = (f"rate {threshold!r} {math.ceil(self.window_s * 1000)} "
                f"{self.buckets} {self.min_calls} {self.baseline_factor!r} "
                f"{self.baseline_alpha!r}")
        super().__init__(client, name, rule=rule, local_threshold=self.min_calls,
                         settings=settings, options=options)

    def _result_is_news(self, failed: bool, attempt: Attempt | None) -> bool:
        return True  # every result feeds the shared window

    def _observe(self, st: BreakerState, changes: tuple[bk.Change, ...] = (),
                 subscription: float | None = None) -> None:
        if st.calls or st.throttled:
            self._window = (st.calls, st.error_rate, st.throttled)
        super()._observe(st, changes, subscription)

    def shed_probability(self) -> float:
        """The fraction of requests client-side throttling sheds now (0 without it)."""
        if self.throttle_k is None:
            return 0.0
        calls, error_rate, shed = self._window
        requests = calls + shed
        accepts = calls * (1 - error_rate)
        return max(0.0, (requests - self.throttle_k * accepts) / (requests + 1))

    def _attempt(self) -> Op[Attempt]:
        if self.throttle_k is not None and self._rng.random() < self.shed_probability():
            with self._shed_lock:
                self._shed += 1
            return Done(Attempt(False, "throttled", None, 0.0, "throttle"))
        return super()._attempt()

    def _take_shed(self) -> int:
        with self._shed_lock:
            shed, self._shed = self._shed, 0
        return shed
