"""The load balancer without I/O: the pool composed of its parts, and execute's flow.

``LoadBalancerCore`` is composition: ``_pool/view.py`` (the local view), ``breakers.py``
(one breaker per backend), ``leases.py`` (held, ghost and deferred leases),
``registry.py`` (add, compare-and-set changes, remove), ``stats.py`` (the statistics
report), ``health.py`` (the elected health round), ``_core/poolconfig.py`` (the
fleet-wide configuration, put in force by ``apply_config``), and here, the one
``pool.lua`` call builder they share (``_plan``) and execute's flow.

``distlb.balancer`` (sync) and ``distlb.aio.balancer`` (generated) drive these
operations. The pool's shared state (registry, connection counts, leases,
statistics) lives under one hash tag and changes only through ``pool.lua``;
selection runs locally on a snapshot of it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

from distlb import _keys, _observe
from distlb._breaker import BreakerBase, BreakerSettings
from distlb._core import pool as pl
from distlb._core import poolconfig as pc
from distlb._core.admission import Admission, denial
from distlb._core.bus import Subscriber
from distlb._core.ops import Call, Done, Invoke, Op, Outcome, Sleep, Steps, steps
from distlb._core.scripts import script
from distlb._pool.breakers import PoolBreakers
from distlb._pool.health import HealthRound
from distlb._pool.leases import LeaseBook, new_lease_id
from distlb._pool.registry import BackendExists, Registry, UnknownBackend
from distlb._pool.stats import BackendStats, Statistics, summarize
from distlb._pool.view import PoolView
from distlb._retry import RetryPolicyCore
from distlb._shaping import Limit, TrafficShaperCore
from distlb._shared import Shared, StoreKeywords, StoreOptions
from distlb._validate import number
from distlb.errors import (
    ConfigError,
    RateLimited,
    StoreUnavailable,
)
from distlb.results import Decision
from distlb.strategies import Backend, Context, NoBackendAvailable, RoundRobinBalancer, Strategy
from distlb.strategies.base import MAX_ID_CHARS, check_id
from distlb.strategies.base import configure as configure_strategy

#: A pool name leaves room for "/<backend id>" in its breakers' names.
MAX_POOL_NAME_CHARS = _keys.MAX_NAME_CHARS - MAX_ID_CHARS - 1
#: The release modes: "sync" returns a lease on the caller's critical path, "deferred"
#: hands it to the next call of this process or the background flusher.
RELEASE_MODES = ("sync", "deferred")
#: The ops that change the registry: they take the pool name and events channel.
_PUBLISHING = frozenset({"add", "put", "remove", "patch"})


class _Exhausted(Exception):
    """Every backend of the pool was tried: ends a retry policy's loop (``retryable`` is
    False) carrying the last attempt's outcome, which ``execute`` then raises or returns.
    Never seen by the caller."""

    retryable = False

    def __init__(self, last: Outcome, reason: NoBackendAvailable) -> None:
        super().__init__("every backend tried")
        self.last, self.reason = last, reason


@dataclass(slots=True)
class Lease:
    """A connection slot held on a backend; returned by ``release`` (or its TTL)."""

    backend: Backend
    lease_id: str | None          #: None when the store was unreachable (nothing to return)
    started_s: float              #: when the call began: after the store and breaker calls
    attempt: Any = None           #: the breaker's Attempt, if the pool has breakers
    member: str = field(default="")


class LoadBalancerCore(Subscriber, Shared):
    """A pool of backends shared by every process, and one call that does it all.

    * Registry: ``add_backend``, ``remove_backend``, ``update_backend_health``,
      ``update_backend_weight`` change the shared registry (JSON records in the
      ``:backends`` hash, which the scripts store but never decode); every process sees
      the change at its next refresh: at once by pub/sub, else within ``refresh_s``.
      A record a process cannot read is left out of its view (logged), never an error.
    * Connection leases: every call through the pool holds a lease on its backend,
      counted fleet-wide in ``:conns``; leases renew every ``lease_ttl_s / 3``
      while the call runs, and a process that dies (even SIGKILL) gives its
      connections back when their TTL passes.
    * Statistics per backend (requests, errors, moving averages of latency and
      error rate) are updated by the same script call that returns the lease; every
      reply carries fresh connection counts, so strategies see the whole fleet.
    * Per-backend circuit breakers (``breaker=BreakerSettings(...)``, ``None`` for
      none): a backend whose breaker is open is not selected.
    * ``execute(fn)``: rate limit, select, lease, call ``fn(backend)``, record, and on
      failure retry on another backend within ``retry_policy`` (and its budget). The
      pool's own limits (``rate_limit`` for the pool, ``client_limit`` per
      ``ctx.client_id``) are checked by the script that takes the lease: admission
      and lease are one round trip. A ``traffic_shaper`` (shared beyond one pool,
      with its own hash tag) costs one more.
    * Priority and bandwidth (``distlb/_core/admission.py``): under contention for
      ``rate_limit`` higher ``ctx.priority`` levels (0..9) are admitted first; a reserve
      of ``priority_reserve`` (in [0, 1]) of its burst is kept for the highest level
      asking within ``priority_window_s`` (seconds, in [0.1, 3600]), and every level
      asking gets about ``priority_min_share`` (in [0, 0.1]) of the rate or more (aging).
      ``client_bandwidth`` (per ``ctx.client_id``) and ``backend_bandwidth`` (per chosen
      backend), bytes per second, are charged with ``ctx.bytes`` in the same script call.

    ``strategy``: how a backend is selected (default ``RoundRobinBalancer()``).
    ``breaker``: the ``BreakerSettings`` every backend's breaker gets as they are,
    with this pool's ``options`` (``None``: no breakers). ``lease_ttl_s``: seconds a
    lease lives without renewal, in [0.1, 86400]. ``refresh_s``: the longest the
    local view goes without a snapshot, seconds in [0, 3600]. ``latency_alpha``: the
    weight of each call in the latency and error-rate moving averages, in (0, 1].
    ``subscribe``: follow registry changes (and, for the breakers, state changes) by
    pub/sub; ``False``: poll every ``refresh_s``.
    ``release``: ``"sync"`` (default) returns each lease and records its outcome in a
    second round trip before ``execute`` returns; ``"deferred"`` takes that round trip
    off the caller's path: the release rides on this process's next pool call, or the
    background flusher sends it within ``release_delay_s`` (seconds in [0.001, 1],
    default 0.05), at most 32 per call; ``close()`` sends what is left. Fleet-wide
    connection counts and statistics then lag by at most that delay; a process that
    dies with releases unsent gives its connections back by lease expiry (within
    ``lease_ttl_s`` plus the fleet's ``refresh_s``), like any dead process.
    ``options``: a ``StoreOptions`` (``prefix``, ``on_store_error``,
    ``retry_store_after_s``, ``clock``, ``sleep``) shared with other primitives, or
    those fields as keywords; a field given both ways is a ``ConfigError``.

    ``on_store_error``: ``"fail_open"`` (and ``"local"``) keep balancing on the last
    known view without leases or statistics; ``"fail_closed"`` refuses calls.
    Registry changes always need the store and raise ``StoreUnavailable`` without it.

    Keys (hash tag ``{pool:<name>}``): the main hash (``epoch``, ``version``),
    ``:backends``, ``:since``, ``:conns``, ``:leases`` (zset), ``:stats``, ``:checker``.
    A pool name is at most 127 characters (its breakers are ``<pool>/<backend id>``).
    """

    kind = "pool"

    def __init__(self, client: Any, name: str, strategy: Strategy | None = None, *,
                 rate_limit: Limit | None = None, client_limit: Limit | None = None,
                 client_bandwidth: Limit | None = None, backend_bandwidth: Limit | None = None,
                 priority_reserve: float = 0.5, priority_min_share: float = 0.05,
                 priority_window_s: float = 10.0,
                 traffic_shaper: TrafficShaperCore | None = None,
                 retry_policy: RetryPolicyCore | None = None,
                 breaker: BreakerSettings | None = BreakerSettings(),  # noqa: B008 (frozen)
                 lease_ttl_s: float = 30.0, refresh_s: float = 1.0, latency_alpha: float = 0.1,
                 subscribe: bool = True, release: str = "sync",
                 release_delay_s: float = 0.05, options: StoreOptions | None = None,
                 **store: Unpack[StoreKeywords]) -> None:
        super().__init__(client, name, options=options, **store)
        if len(name) > MAX_POOL_NAME_CHARS:
            # Each backend's breaker is named "<pool>/<backend id>": that must fit too.
            raise ConfigError("name", f"a pool name must be at most {MAX_POOL_NAME_CHARS} "
                                      f"characters (its breakers are named '<pool>/<backend "
                                      f"id>', at most {_keys.MAX_NAME_CHARS}), got {len(name)}")
        self.strategy: Strategy = strategy if strategy is not None else RoundRobinBalancer()
        if not hasattr(self.strategy, "select"):
            raise ConfigError("strategy", "must have select(backends, ctx)")
        for field_name, limit in (("rate_limit", rate_limit), ("client_limit", client_limit)):
            if limit is not None and not isinstance(limit, Limit):
                raise ConfigError(field_name, "must be a distlb.Limit or None")
            if limit is not None:
                limit.check_request_limit(field_name)   # a request costs 1: burst >= 1
        self.rate_limit = rate_limit
        self.client_limit = client_limit
        # priority and bandwidth admission (distlb/_core/admission.py)
        self.admission = Admission(client_bandwidth, backend_bandwidth, priority_reserve,
                                   priority_min_share, priority_window_s)
        if traffic_shaper is not None and not isinstance(traffic_shaper, TrafficShaperCore):
            raise ConfigError("traffic_shaper", "must be a TrafficShaper or None")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicyCore):
            raise ConfigError("retry_policy", "must be a RetryPolicy or None")
        if breaker is not None and not isinstance(breaker, BreakerSettings):
            raise ConfigError("breaker", "must be a BreakerSettings or None")
        self.traffic_shaper = traffic_shaper
        self.retry_policy = retry_policy
        self.breaker_settings = breaker
        self.lease_ttl_s = number("lease_ttl_s", lease_ttl_s, low=0.1, high=86400)
        self.refresh_s = number("refresh_s", refresh_s, low_inclusive=True, high=3600)
        self.latency_alpha = number("latency_alpha", latency_alpha, high=1)
        self._alpha = repr(self.latency_alpha)
        if release not in RELEASE_MODES:
            raise ConfigError("release", f"must be one of {', '.join(RELEASE_MODES)}, got "
                                         f"{release!r:.40}")
        self.release = release
        self.release_delay_s = number("release_delay_s", release_delay_s, low=0.001,
                                      low_inclusive=True, high=1.0)
        self._ttl_ms = math.ceil(self.lease_ttl_s * 1000)
        self.subscribe = bool(subscribe)
        self.channel = _keys.events_channel(self.prefix)
        k = self.key
        self.keys = (k, *(_keys.part(k, p) for p in ("backends", "conns", "leases", "stats",
                                                       "since")))
        self._script = script("pool")
        self._wire = pl.Wire(self._script.sha)   # its commands, packed without redis-py
        self._pool_view = PoolView()      # registry, counts, statistics; the snapshot
        self._leases = LeaseBook()        # held, ghosts, deferred releases
        self._pool_breakers = PoolBreakers(name, breaker, self.subscribe, self._new_breaker)
        self._registry = Registry(name, self._pool_view, self._plan)   # add, patch, remove
        self._health = HealthRound(self.key, self._guard, lambda: self._refresh(force=True),
                                   lambda: self._snapshot, self._registry.set_health)
        # Fleet-wide configuration (distlb/_core/poolconfig.py): stored values override the
        # limits, breaker settings and strategy parameters above at each refresh.
        self._fleet_config = pc.Follower(self)

    # -- the local view ----------------------------------------------------------------------

    def _plan(self, op: str, args: list[Any],
              fallback: Callable[[], pl.PoolState] | None = None,
              extra_keys: tuple[str, ...] = (), ghost: str | None = None) -> Call[pl.PoolState]:
        """A ``pool.lua`` call. ``ghost``: the lease member this call may create or keep;
        if the call gets no answer it is given back by a later call. Deferred releases
        waiting in this process ride along (at most ``RELEASES_PER_CALL``)."""
        book = self._leases
        releases, ghosts, ticket = book.trailing()   # usually none: rare, or "deferred"

        if ghosts or ticket:
            def parse(reply: Any) -> pl.PoolState:
                try:
                    state = pl.parse(reply)
                    book.answered(ghosts)
                    self._apply(state)
                finally:
                    book.landed(ticket)
                return state
        else:
            parse = self._parse_apply

        def unavailable() -> pl.PoolState:
            book.unanswered(releases, ghost)
            book.landed(ticket)
            if fallback is None:
                raise StoreUnavailable(f"store unreachable: pool {self.name!r} not changed")
            return fallback()

        keys = self.keys + extra_keys if extra_keys else self.keys
        if releases or ghosts or op in _PUBLISHING:
            flat = [x for r in releases for x in r]
            words = (op, *args, *((self.name, self.channel) if op in _PUBLISHING else ()),
                     *flat, len(releases), *ghosts, len(ghosts), self._pool_view.version)
        else:                                  # the hot path: nothing carried
            words = (op, *args, 0, 0, self._pool_view.version)
        packed = self._wire.pack(keys, words)    # the runner packs it when None
        return Call(self._script, keys, words, parse, unavailable, self._guard,
                    packed=[packed] if packed is not None else [],
                    aborted=functools.partial(book.landed, ticket) if ticket else None)

    def _parse_apply(self, reply: Any) -> pl.PoolState:
        """A reply of a call that carried no ghosts: parsed and applied to the view."""
        state = pl.parse(reply)
        self._apply(state)
        return state

    def _local_state(self) -> pl.PoolState:
        """The fallback while the store is unreachable: keep the last known view."""
        if self.on_store_error == "fail_closed":
            raise StoreUnavailable(f"store unreachable and pool {self.name!r} fails closed")
        return self._pool_view.local_state()

    @property
    def _snapshot(self) -> tuple[Backend, ...]:
        return self._pool_view.snapshot

    def _apply(self, state: pl.PoolState) -> None:
        self._pool_view.apply(state, self.clock())

    @property
    def known_backends(self) -> tuple[Backend, ...]:
        """The backends as this process last saw them (registry, connection counts,
        statistics), without a round trip; ``backends()`` refreshes first."""
        return self._snapshot

    def _on_event(self, event: dict[str, Any]) -> None:
        news = self._fleet_config.on_event(event)     # None: not a configuration change
        if news is None:
            self._pool_view.on_event(str(event.get("version")))
        elif news:                                    # read it (after a snapshot) next call
            self._pool_view.mark_stale()

    def apply_config(self, applied: pc.Applied) -> None:
        """Put configuration values in force in this process: what the fleet-wide
        configuration's follower (``distlb/_core/poolconfig.py``) calls after each read
        that changed something. Limits take effect at the next admission; strategy
        parameters through the strategy's ``configure`` (derived state such as a hash ring
        is rebuilt at once); new breaker settings retire this pool's breaker objects
        (closed: they leave the event bus) and the next use of each backend makes a new
        one with them. The breakers' shared state (open, failures, probes) is in the
        store and carries over."""
        self.rate_limit = applied.rate_limit
        self.client_limit = applied.client_limit
        if applied.strategy:
            configure_strategy(self.strategy, applied.strategy)
        if applied.breaker != self.breaker_settings:
            self.breaker_settings = applied.breaker
            for cb in self._pool_breakers.reset(applied.breaker, self.subscribe):
                cb.close()

    def _refresh(self, force: bool = False) -> Op[Any]:
        """A snapshot call when the view is older than ``refresh_s`` or an event said so."""
        self._subscribed_since()          # join the bus: events mark the view stale
        if not force and not self._pool_view.due(self.clock(), self.refresh_s):
            # ... unless the fleet-wide configuration was never read (a first call after
            # add_backend, whose reply refreshed the view): it is read before any admission.
            return Done(None) if self._fleet_config.version >= 0 else self._fleet_config.read()
        return self._fleet_config.after(self._plan("snapshot", [], self._local_state))

    def _breaker_of(self, backend_id: str) -> BreakerBase | None:
        """The circuit breaker of one backend (shared by every process), if the pool has them
        (the shells' public ``breaker_for`` types it as their own breaker class)."""
        return self._pool_breakers.of(backend_id)

    def _new_breaker(self, name: str, settings: BreakerSettings) -> BreakerBase:
        """A backend's circuit breaker on this pool's client, with ``settings`` and the pool's
        own ``options`` (prefix, failure policy, retry interval, clock, sleep): the shell
        builds its own flavour (``distlb.CircuitBreaker`` or ``distlb.aio.CircuitBreaker``)."""
        raise NotImplementedError

    # -- selection and leases ----------------------------------------------------------------

    def _select(self, ctx: Context | None) -> Steps[Backend]:
        yield from steps(self._refresh())
        return self._choose(ctx if ctx is not None else _NO_CTX)

    def _choose(self, ctx: Context) -> Backend:
        """Select on the local snapshot (no I/O): backends whose breaker this process knows
        to refuse calls are excluded."""
        if self._pool_breakers.watching:
            open_ = self._pool_breakers.refusing(self.clock())
            if open_:
                ctx = ctx.excluding(*open_)
        try:
            return self.strategy.select(self._snapshot, ctx)
        except NoBackendAvailable as exc:
            version = self._pool_view.version
            if not self._snapshot and (not version or self._guard.skip()):
                # Empty because the store is out of reach, not because the pool is empty.
                raise StoreUnavailable(
                    f"store unreachable: pool {self.name!r} has no known backends"
                    + ("" if version else " (the store was never reached)")) from exc
            raise

    def _acquire_call(self, backend_id: str, lease_id: str, ctx: Context,
                      admit: bool, member: str | None = None) -> Call[pl.PoolState]:
        args: list[Any] = [backend_id, lease_id, self._ttl_ms]
        ghost = member if member is not None else f"{backend_id}|{lease_id}"
        if not self.admission.applies(ctx, admit, self.rate_limit, self.client_limit):
            return self._plan("acquire", args, self._local_state, ghost=ghost)
        more, keys = self.admission.plan(self.key, backend_id, ctx, admit, self.rate_limit,
                                         self.client_limit)
        return self._plan("admit", [*args, *more], self._local_state, keys, ghost=ghost)

    def _lease(self, ctx: Context | None, tried: set[str], admit: bool = True) -> Steps[Lease]:
        """Select a backend whose breaker admits the call, and take a connection slot.

        With ``admit`` the pool's own rate limits are checked in the same script call
        that takes the lease (one round trip for both). The common case is straight-line:
        no snapshot due, the breaker's answer known locally (``Done``): one step, the
        script call."""
        ctx = ctx if ctx is not None else _NO_CTX
        breakers = self._pool_breakers
        while True:
            probe = breakers.due_probe(self._snapshot, tried, self.clock()) \
                if breakers.watching else None
            if probe is not None:
                backend = probe
            else:
                refresh = self._refresh()
                if type(refresh) is not Done:        # a snapshot (or configuration) read due
                    yield from steps(refresh)
                backend = self._choose(ctx.excluding(*tried) if tried else ctx)  # skips open
            backend_id = backend.id
            tried.add(backend_id)
            lease_id = new_lease_id()
            member = f"{backend_id}|{lease_id}"
            state: pl.PoolState = yield self._acquire_call(backend_id, lease_id, ctx, admit,
                                                           member)
            status = state.status
            if status != "ok":
                if status.startswith("limited:"):
                    raise denial(status, self.name, ctx, backend_id)
                if status == "unknown":        # removed meanwhile: nothing charged, pick again
                    continue
            admit = False
            lease = Lease(backend, None if status == "unavailable" else lease_id,
                          0.0, None, member)
            # The breaker is asked after admission and lease, so a half-open probe permit
            # is only ever taken by a call that will run (and return it).
            cb = breakers.of(backend_id)
            if cb is not None:
                op = cb.attempt_op()
                attempt = op.value if type(op) is Done else (yield from steps(op))
                lease.attempt = attempt
                if not attempt.allowed:         # open, or half-open with its probes taken
                    breakers.refused(backend_id)
                    if lease.lease_id is not None:
                        yield self._plan("drop", [backend_id, lease_id], self._local_state,
                                         ghost=member)
                    continue
            # The call's time starts now, after the store and breaker round trips: latency
            # statistics (and the samples adaptive strategies score by) measure the backend.
            lease.started_s = started = self.clock()
            if lease.lease_id is not None:
                self._leases.hold(member, started)
            _observe.selection(self.name, backend_id)
            return lease

    def _release(self, lease: Lease, error: BaseException | None,
                 duration_s: float | None = None) -> Steps[None]:
        """Return a lease and record the outcome; ``duration_s`` is the call's own time
        (measured around the user's function), else the time since the lease was handed out."""
        duration = duration_s if duration_s is not None else self.clock() - lease.started_s
        cb = self._breaker_of(lease.backend.id)
        verdict = cb.classify(error, duration) if cb is not None else (
            "failure" if error is not None else "success")
        if lease.lease_id is not None or verdict != "ignored":
            release = (lease.backend.id, lease.lease_id or "", f"{duration * 1000:.3f}",
                       "1" if verdict == "failure" else "0", self._alpha)
            if self.release == "deferred":
                # Off the critical path: the next call of this process carries it, or the
                # flusher within release_delay_s.
                self._leases.let_go(lease.member, release)
            else:
                self._leases.let_go(lease.member)
                yield self._plan("release", list(release), self._local_state,
                                 ghost=lease.member if lease.lease_id is not None else None)
        else:
            self._leases.let_go(lease.member)
        if cb is not None:
            op = cb.outcome_op(lease.attempt, verdict)
            if type(op) is not Done:           # closed and nothing new: no step at all
                yield from steps(op)
        observe = getattr(self.strategy, "observe", None)
        if observe is not None:
            observe(lease.backend.id, duration, verdict != "failure")

    def _record_result(self, backend_id: str, duration_s: float, success: bool) -> Steps[None]:
        """Record a call made outside ``execute``/``connection`` (stats and breaker)."""
        check_id(backend_id, "backend_id")
        if not isinstance(success, bool):
            raise ConfigError("success", "must be True or False")
        number("duration_s", duration_s, low_inclusive=True, high=86400)
        yield self._plan("release", [backend_id, "", f"{duration_s * 1000:.3f}",
                                     int(not success), self._alpha],
                         self._local_state)
        cb = self._breaker_of(backend_id)
        if cb is not None:
            yield from steps(cb.unadmitted_op(not success))

    def _renew(self) -> Op[Any]:
        members = self._leases.to_renew()
        if not members:
            return self._flush()
        return self._plan("renew", [self._ttl_ms, *members], self._local_state)

    #: Seconds between two looks at a flush another thread or task has in flight.
    flush_poll_s = 0.001

    def _flush(self) -> Op[Any]:
        """Send the deferred releases waiting in this process (``release="deferred"``), and
        wait for those another call (the background flusher, a concurrent ``execute``)
        took before this one and has not landed yet: when it returns, every release made
        before it is written (or, if the store did not answer, will be given back)."""
        book = self._leases
        if not book.pending and not book.in_flight():
            return Done(None)
        return self._flush_all()

    def _flush_all(self) -> Steps[None]:
        book = self._leases
        upto = book.in_flight()           # calls in flight now: wait for them too
        while book.pending:
            yield self._plan("flush", [], self._local_state)
        while book.flying(upto):          # a call ends by its reply, its fallback or an
            yield Sleep(self.flush_poll_s)   # error: each lands its ticket

    # -- execute -----------------------------------------------------------------------------

    def _admit(self, ctx: Context | None) -> Op[Any]:
        if self.traffic_shaper is None:
            return Done(None)
        # Ranked like the pool's own limit: at the context's priority (0 without one).
        ctx = ctx if ctx is not None else _NO_CTX
        return _admitted(self.traffic_shaper.admission(ctx.client_id, ctx.bytes,
                                                       ctx.priority))

    def _attempt_once(self, fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any], ctx: Context | None,
                      tried: set[str], last: list[Outcome] | None = None) -> Steps[Outcome]:
        """One attempt. ``last`` (under a retry policy) holds the previous attempt's
        outcome: when no backend is left to try, the attempt ends the retries with it."""
        try:
            lease = yield from self._lease(ctx, tried, admit=not tried)
        except NoBackendAvailable as exc:
            if last:          # every backend tried: stop, with the last real outcome
                return Outcome(None, _Exhausted(last[0], exc), 0.0)
            return Outcome(None, exc, 0.0)
        outcome: Outcome = yield Invoke(fn, (lease.backend, *args), kwargs)
        yield from self._release(lease, outcome.error, outcome.duration_s)
        if last is not None:
            last[:] = [outcome]
        return outcome

    def _execute(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 ctx: Context | None) -> Steps[Any]:
        if self.traffic_shaper is not None:
            yield from steps(self._admit(ctx))
        tried: set[str] = set()
        if self.retry_policy is None:
            outcome = yield from self._attempt_once(fn, args, kwargs, ctx, tried)
            if outcome.error is not None:
                raise outcome.error
            return outcome.value
        last: list[Outcome] = []

        def attempt() -> Steps[Outcome]:
            return self._attempt_once(fn, args, kwargs, ctx, tried, last)

        try:
            return (yield from self.retry_policy.attempts_op(attempt))
        except _Exhausted as exhausted:
            # Every backend was tried: the caller gets what the last one did (its error,
            # chained to the NoBackendAvailable that ended the retries, or its value when
            # it was retried on its result), never a bare "no backend".
            _observe.retry("gave_up")
            error = exhausted.last.error
            if error is None:
                return exhausted.last.value
            if error.__cause__ is None:
                raise error from exhausted.reason
            raise error from error.__cause__       # its own cause kept

    # -- statistics and health checks (distlb/_pool/stats.py, health.py) ------------------

    def _statistics(self) -> Steps[Statistics]:
        yield from steps(self._refresh(force=True))
        return summarize(self._snapshot, self._pool_view.stats, self._pool_breakers.state_of)

    def _backends(self) -> Steps[tuple[Backend, ...]]:
        yield from steps(self._refresh(force=True))
        return self._snapshot


#: The context of a call that gave none (frozen, so one instance serves every call).
_NO_CTX = Context()


def _admitted(op: Op[Decision]) -> Steps[None]:
    decision = yield from steps(op)
    if not decision.allowed:
        raise RateLimited(decision.explanation, decision.retry_after_s)


__all__ = ["BackendExists", "BackendStats", "BreakerSettings", "Lease",
           "LoadBalancerCore", "Statistics", "UnknownBackend"]
