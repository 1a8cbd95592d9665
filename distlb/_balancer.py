"""The load balancer without I/O: registry view, leases, statistics, selection, execute.

``distlb.balancer`` (sync) and ``distlb.aio.balancer`` (generated) drive these
operations. The pool's shared state (registry, connection counts, leases,
statistics) lives under one hash tag and changes only through ``pool.lua``;
selection runs locally on a snapshot of it.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Unpack

from distlb import _keys, _observe
from distlb._breaker import BreakerBase, BreakerSettings
from distlb._core import pool as pl
from distlb._core.admission import Admission, denial
from distlb._core.bus import Subscriber
from distlb._core.ops import Call, Done, Invoke, Op, Outcome, Steps, steps
from distlb._core.scripts import script
from distlb._retry import RetryPolicyCore
from distlb._shaping import Limit, TrafficShaperCore
from distlb._shared import Shared, StoreKeywords, StoreOptions
from distlb._validate import integer, number
from distlb.errors import (
    ConfigError,
    DistlbError,
    RateLimited,
    StoreError,
    StoreUnavailable,
)
from distlb.results import Transition
from distlb.strategies import Backend, Context, NoBackendAvailable, RoundRobinBalancer, Strategy
from distlb.strategies.base import MAX_ID_CHARS, check_id, check_metadata

#: A pool name leaves room for "/<backend id>" in its breakers' names.
MAX_POOL_NAME_CHARS = _keys.MAX_NAME_CHARS - MAX_ID_CHARS - 1
#: Lease members given back per call, and remembered at most, after unanswered calls.
GHOSTS_PER_CALL = 32
MAX_GHOSTS = 4096


class BackendExists(DistlbError, LookupError):
    """``add_backend`` with an id the pool already has."""


class UnknownBackend(DistlbError, LookupError):
    """An operation named a backend the pool does not have."""


@dataclass(frozen=True, slots=True)
class BackendStats:
    """One backend's shared statistics, as ``get_statistics()`` reports them."""

    id: str
    address: str
    weight: int
    healthy: bool
    breaker: str                 #: "closed", "open", "half_open", or "-" without breakers
    active_connections: int
    requests: int
    errors: int
    error_rate: float            #: moving average over recent requests
    latency_ms: float            #: moving average over recent requests
    throughput_per_s: float      #: completed requests per second since the last refresh


@dataclass(frozen=True, slots=True)
class Statistics:
    """The pool at a glance. ``str()`` is a one-line summary."""

    backends: int
    healthy: int
    connections: int
    avg_response_ms: float
    per_backend: tuple[BackendStats, ...] = ()

    def __str__(self) -> str:
        return (f"Backends: {self.healthy}/{self.backends}, Connections: {self.connections}, "
                f"Avg Response: {self.avg_response_ms:.2f}ms")


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
                 subscribe: bool = True, options: StoreOptions | None = None,
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
        self.subscribe = bool(subscribe)
        self.channel = _keys.events_channel(self.prefix)
        k = self.key
        self.keys = (k, *(_keys.part(k, p) for p in ("backends", "conns", "leases", "stats",
                                                       "since")))
        self._lock = threading.Lock()
        self._records: dict[str, pl.Record] = {}
        self._version = ""                # the registry token of the view; "" = none yet
        # Leases whose acquire (or release) never got an answer: the script may have run,
        # so they are given back by the next call that reaches the store (no extra trip).
        self._ghosts: dict[str, None] = {}
        self._conns: dict[str, int] = {}
        self._stats: dict[str, float] = {}
        self._refreshed_at = -math.inf
        self._stale = True
        self._offset_s = 0.0              # local clock - server clock, for slow start
        self._tput: dict[str, tuple[float, float, float]] = {}   # id -> (requests, at, rate)
        self._snapshot: tuple[Backend, ...] = ()
        self._held: dict[str, float] = {}  # lease members this process holds -> local start
        self._pid = os.getpid()
        self._breakers: dict[str, BreakerBase] = {}
        self._open_ids: set[str] = set()
        self._next_probe: dict[str, float] = {}
        self._checker_id = uuid.uuid4().hex

    # -- the local view ----------------------------------------------------------------------

    def _plan(self, op: str, args: list[Any],
              fallback: Callable[[], pl.PoolState] | None = None,
              extra_keys: tuple[str, ...] = (), ghost: str | None = None) -> Call[pl.PoolState]:
        """A ``pool.lua`` call. ``ghost``: the lease member this call may create or keep;
        if the call gets no answer it is given back by a later call."""
        ghosts: list[str] = []
        if self._ghosts:                        # rare: only after unanswered calls
            with self._lock:
                ghosts = list(itertools.islice(self._ghosts, GHOSTS_PER_CALL))

        def parse(reply: Any) -> pl.PoolState:
            state = pl.parse(reply)
            if ghosts:
                with self._lock:
                    for member in ghosts:
                        self._ghosts.pop(member, None)
            self._apply(state)
            return state

        def unavailable() -> pl.PoolState:
            if ghost is not None:
                with self._lock:
                    self._ghosts[ghost] = None
                    while len(self._ghosts) > MAX_GHOSTS:   # the oldest expire by TTL anyway
                        self._ghosts.pop(next(iter(self._ghosts)))
            if fallback is None:
                raise StoreUnavailable(f"store unreachable: pool {self.name!r} not changed")
            return fallback()

        return Call(script("pool"), self.keys + extra_keys,
                    (op, *args, *ghosts, len(ghosts), self._version, self.name, self.channel),
                    parse, unavailable, self._guard)

    def _local_state(self) -> pl.PoolState:
        """The fallback while the store is unreachable: keep the last known view."""
        if self.on_store_error == "fail_closed":
            raise StoreUnavailable(f"store unreachable and pool {self.name!r} fails closed")
        return pl.PoolState("unavailable", self._version, 0, None, self._conns, self._stats)

    def _apply(self, state: pl.PoolState) -> None:
        now = self.clock()
        with self._lock:
            counts_only = state.records is None and state.stats is None and bool(self._snapshot)
            if state.records is not None:
                self._records = state.records
                self._version = state.version
            self._conns = state.conns
            if state.stats is not None:
                self._stats = state.stats
            self._offset_s = now - state.server_us / 1e6
            if state.stats is not None:   # a full snapshot: records, counts and statistics
                self._refreshed_at = now
                self._stale = False
            if counts_only:
                # The hot path (lease, release): only connection counts moved, so only the
                # backends whose count changed get a new snapshot entry.
                conns = self._conns
                self._snapshot = tuple(
                    b if conns.get(b.id, 0) == b.active_connections
                    else replace(b, active_connections=conns.get(b.id, 0))
                    for b in self._snapshot)
            else:
                self._snapshot = self._build_snapshot(now)

    def _build_snapshot(self, now: float) -> tuple[Backend, ...]:
        out = []
        for bid, r in sorted(self._records.items()):
            requests = self._stats.get(f"{bid}:requests", 0.0)
            prev = self._tput.get(bid)
            rate = prev[2] if prev else 0.0
            if prev is None or now - prev[1] >= 1.0:
                if prev is not None:
                    rate = max(0.0, requests - prev[0]) / (now - prev[1])
                self._tput[bid] = (requests, now, rate)
            out.append(Backend(
                bid, r.address, r.weight, r.healthy, self._conns.get(bid, 0),
                self._stats.get(f"{bid}:latency_ms", 0.0),
                self._stats.get(f"{bid}:error_rate", 0.0), rate,
                r.since_us / 1e6 + self._offset_s, dict(r.metadata)))
        return tuple(out)

    @property
    def known_backends(self) -> tuple[Backend, ...]:
        """The backends as this process last saw them (registry, connection counts,
        statistics), without a round trip; ``backends()`` refreshes first."""
        return self._snapshot

    def _on_event(self, event: dict[str, Any]) -> None:
        if str(event.get("version")) != self._version:
            self._stale = True

    def _refresh(self, force: bool = False) -> Op[Any]:
        """A snapshot call when the view is older than ``refresh_s`` or an event said so."""
        self._subscribed_since()          # join the bus: events mark the view stale
        if not force and not self._stale and self.clock() - self._refreshed_at < self.refresh_s:
            return Done(None)
        return self._plan("snapshot", [], self._local_state)

    def _breaker_of(self, backend_id: str) -> BreakerBase | None:
        """The circuit breaker of one backend (shared by every process), if the pool has them
        (the shells' public ``breaker_for`` types it as their own breaker class)."""
        if self.breaker_settings is None:
            return None
        with self._lock:
            cb = self._breakers.get(backend_id)
            if cb is None:
                settings = self.breaker_settings
                if not self.subscribe:    # a pool that polls: its breakers poll too
                    settings = settings.replace(subscribe=False)
                cb = self._breakers[backend_id] = self._new_breaker(
                    f"{self.name}/{backend_id}", settings)
                # The backend id is bound here, never recovered from the breaker's name
                # (an id may itself contain "/").
                cb.metrics_pool = self.name
                cb.add_listener(functools.partial(self._on_breaker, backend_id))
            return cb

    def _new_breaker(self, name: str, settings: BreakerSettings) -> BreakerBase:
        """A backend's circuit breaker on this pool's client, with ``settings`` and the pool's
        own ``options`` (prefix, failure policy, retry interval, clock, sleep): the shell
        builds its own flavour (``distlb.CircuitBreaker`` or ``distlb.aio.CircuitBreaker``)."""
        raise NotImplementedError

    def _on_breaker(self, backend_id: str, transition: Transition) -> None:
        if transition.to_state == "closed":
            self._open_ids.discard(backend_id)
        else:
            self._open_ids.add(backend_id)

    #: How often this process may send a recovering backend a probe, whatever the strategy.
    probe_interval_s = 0.05

    def _due_probe(self, tried: set[str]) -> Backend | None:
        """A backend whose breaker may take a probe now (its open timeout has passed).

        Probes go to it whatever the strategy would pick: a strategy that scores by
        past errors (adaptive) would otherwise never send a recovering backend the
        calls that let its breaker close. At most one try per ``probe_interval_s``
        per backend and process; the breaker still rations probes fleet-wide.
        """
        if not self._open_ids:
            return None
        now = self.clock()
        by_id = {b.id: b for b in self._snapshot}
        for bid in list(self._open_ids):
            cb, b = self._breakers.get(bid), by_id.get(bid)
            if cb is None or b is None or not b.healthy or bid in tried:
                continue
            if cb._view.fast_attempt(now, cb._subscribed_since()) is not None:
                continue                      # known closed or still open: not due
            if now < self._next_probe.get(bid, 0.0):
                continue
            self._next_probe[bid] = now + self.probe_interval_s
            return b
        return None

    def _open_breakers(self) -> frozenset[str]:
        """Backends whose breaker this process knows to refuse calls now (no round trip).

        Only breakers seen open or refusing are looked at (kept by their transition
        events), so the common all-closed case costs nothing.
        """
        if not self._open_ids:
            return frozenset()
        now, out = self.clock(), set()
        for bid in list(self._open_ids):
            cb = self._breakers.get(bid)
            fast = cb._view.fast_attempt(now, cb._subscribed_since()) if cb else None
            if fast is not None and not fast.allowed:
                out.add(bid)
        return frozenset(out)

    # -- registry ----------------------------------------------------------------------------

    def _add(self, backend: Backend) -> Steps[None]:
        if not isinstance(backend, Backend):
            raise ConfigError("backend", "must be a distlb.Backend")
        pl.check_address(backend.address)
        if not isinstance(backend.healthy, bool):
            raise ConfigError("healthy", "must be True or False")
        check_id(backend.id)
        raw = pl.encode_record(backend.address, backend.weight, backend.healthy,
                               check_metadata(backend.metadata))
        state: pl.PoolState = yield self._plan("add", [raw, backend.id])
        if state.status == "exists":
            raise BackendExists(f"pool {self.name!r} already has a backend {backend.id!r}")

    #: Compare-and-set attempts of one health or weight change racing other changes.
    patch_attempts = 8

    def _patch(self, backend_id: str, *, weight: int | None = None,
               healthy: bool | None = None,
               metadata: dict[str, Any] | None = None) -> Steps[None]:
        """Change a record: the client builds the new record from its view and the script
        stores it only if the stored one is still the one it was built from (the script
        never decodes records). A conflicting reply carries the fresh records: try again."""
        check_id(backend_id, "backend_id")
        for _ in range(self.patch_attempts):
            with self._lock:
                rec = self._records.get(backend_id)
            if rec is None:                     # not in this view: read the registry
                yield self._plan("snapshot", [])
                with self._lock:
                    rec = self._records.get(backend_id)
                if rec is None:
                    raise UnknownBackend(f"pool {self.name!r} has no (readable) backend "
                                         f"{backend_id!r}")
            new_healthy = rec.healthy if healthy is None else healthy
            raw = pl.encode_record(rec.address, rec.weight if weight is None else weight,
                                   new_healthy, rec.metadata if metadata is None else metadata)
            state: pl.PoolState = yield self._plan(
                "patch", [backend_id, raw, rec.raw, int(new_healthy and not rec.healthy)])
            if state.status == "ok":
                return
            if state.status == "unknown":
                raise UnknownBackend(f"pool {self.name!r} has no backend {backend_id!r}")
            with self._lock:                    # "conflict": the reply refreshed the view
                if self._records.get(backend_id) is rec:
                    self._records.pop(backend_id, None)   # unreadable now: read it again
        raise StoreError(f"pool {self.name!r}: backend {backend_id!r} changed concurrently "
                         f"{self.patch_attempts} times; not updated")

    def _set_health(self, backend_id: str, healthy: bool) -> Steps[None]:
        if not isinstance(healthy, bool):
            raise ConfigError("healthy", "must be True or False")
        return self._patch(backend_id, healthy=healthy)

    def _set_weight(self, backend_id: str, weight: int) -> Steps[None]:
        return self._patch(backend_id, weight=integer("weight", weight, low=0, high=1_000_000))

    def _set_metadata(self, backend_id: str, metadata: Mapping[str, Any]) -> Steps[None]:
        return self._patch(backend_id, metadata=check_metadata(metadata))

    def _remove(self, backend_id: str) -> Steps[None]:
        check_id(backend_id, "backend_id")
        state: pl.PoolState = yield self._plan("remove", [backend_id])
        if state.status == "unknown":
            raise UnknownBackend(f"pool {self.name!r} has no backend {backend_id!r}")

    def _backends(self) -> Steps[tuple[Backend, ...]]:
        yield from steps(self._refresh(force=True))
        return self._snapshot

    # -- selection and leases ----------------------------------------------------------------

    def _select(self, ctx: Context | None) -> Steps[Backend]:
        yield from steps(self._refresh())
        ctx = ctx if ctx is not None else Context()
        open_ = self._open_breakers()
        if open_:
            ctx = ctx.excluding(*open_)
        try:
            return self.strategy.select(self._snapshot, ctx)
        except NoBackendAvailable as exc:
            if not self._snapshot and (not self._version or self._guard.skip()):
                # Empty because the store is out of reach, not because the pool is empty.
                raise StoreUnavailable(
                    f"store unreachable: pool {self.name!r} has no known backends"
                    + ("" if self._version else " (the store was never reached)")) from exc
            raise

    def _acquire_call(self, backend_id: str, lease_id: str, ctx: Context,
                      admit: bool) -> Call[pl.PoolState]:
        args: list[Any] = [backend_id, lease_id, math.ceil(self.lease_ttl_s * 1000)]
        if not self.admission.applies(ctx, admit, self.rate_limit, self.client_limit):
            return self._plan("acquire", args, self._local_state,
                              ghost=f"{backend_id}|{lease_id}")
        more, keys = self.admission.plan(self.key, backend_id, ctx, admit, self.rate_limit,
                                         self.client_limit)
        return self._plan("admit", [*args, *more], self._local_state, keys,
                          ghost=f"{backend_id}|{lease_id}")

    def _lease(self, ctx: Context | None, tried: set[str], admit: bool = True) -> Steps[Lease]:
        """Select a backend whose breaker admits the call, and take a connection slot.

        With ``admit`` the pool's own rate limits are checked in the same script call
        that takes the lease (one round trip for both)."""
        ctx = ctx if ctx is not None else Context()
        while True:
            probe = self._due_probe(tried)
            if probe is not None:
                backend = probe
            else:
                backend = yield from self._select(ctx.excluding(*tried))   # skips known-open
            tried.add(backend.id)
            lease_id = uuid.uuid4().hex
            member = f"{backend.id}|{lease_id}"
            state: pl.PoolState = yield self._acquire_call(backend.id, lease_id, ctx, admit)
            if state.status.startswith("limited:"):
                raise denial(state.status, self.name, ctx, backend.id)
            if state.status == "unknown":          # removed meanwhile: nothing charged, pick again
                continue
            admit = False
            lease = Lease(backend, None if state.status == "unavailable" else lease_id,
                          0.0, None, member)
            # The breaker is asked after admission and lease, so a half-open probe permit
            # is only ever taken by a call that will run (and return it).
            cb = self._breaker_of(backend.id)
            if cb is not None:
                lease.attempt = yield from steps(cb._attempt())
                if not lease.attempt.allowed:   # open, or half-open with its probes taken
                    self._open_ids.add(backend.id)
                    if lease.lease_id is not None:
                        yield self._plan("drop", [backend.id, lease_id], self._local_state,
                                         ghost=member)
                    continue
            # The call's time starts now, after the store and breaker round trips: latency
            # statistics (and the samples adaptive strategies score by) measure the backend.
            lease.started_s = self.clock()
            if lease.lease_id is not None:
                with self._lock:
                    self._held[member] = lease.started_s
            _observe.selection(self.name, backend.id)
            return lease

    def _release(self, lease: Lease, error: BaseException | None,
                 duration_s: float | None = None) -> Steps[None]:
        """Return a lease and record the outcome; ``duration_s`` is the call's own time
        (measured around the user's function), else the time since the lease was handed out."""
        duration = duration_s if duration_s is not None else self.clock() - lease.started_s
        cb = self._breaker_of(lease.backend.id)
        verdict = cb.classify(error, duration) if cb is not None else (
            "failure" if error is not None else "success")
        with self._lock:
            self._held.pop(lease.member, None)
        if lease.lease_id is not None or verdict != "ignored":
            yield self._plan("release", [lease.backend.id, lease.lease_id or "",
                                         f"{duration * 1000:.3f}", int(verdict == "failure"),
                                         repr(self.latency_alpha)], self._local_state,
                             ghost=lease.member if lease.lease_id is not None else None)
        if cb is not None:
            yield from steps(cb._outcome(lease.attempt, verdict))
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
                                     int(not success), repr(self.latency_alpha)],
                         self._local_state)
        cb = self._breaker_of(backend_id)
        if cb is not None:
            yield from steps(cb._record(not success, None))

    def _renew(self) -> Op[Any]:
        with self._lock:
            if self._pid != os.getpid():   # a forked child must not keep its parent's leases alive
                self._held.clear()
                self._pid = os.getpid()
            members = list(self._held)
        if not members:
            return Done(None)
        return self._plan("renew", [math.ceil(self.lease_ttl_s * 1000), *members],
                          self._local_state)

    # -- execute -----------------------------------------------------------------------------

    def _admit(self, ctx: Context | None) -> Op[Any]:
        if self.traffic_shaper is None:
            return Done(None)
        call = self.traffic_shaper._call("take", ctx.client_id if ctx else None, 1,
                                         ctx.bytes if ctx else 0, None)
        return _admitted(call)

    def _attempt_once(self, fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any], ctx: Context | None,
                      tried: set[str]) -> Steps[Outcome]:
        try:
            lease = yield from self._lease(ctx, tried, admit=not tried)
        except NoBackendAvailable as exc:
            return Outcome(None, exc, 0.0)
        outcome: Outcome = yield Invoke(fn, (lease.backend, *args), kwargs)
        yield from self._release(lease, outcome.error, outcome.duration_s)
        return outcome

    def _execute(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 ctx: Context | None) -> Steps[Any]:
        yield from steps(self._admit(ctx))
        tried: set[str] = set()

        def attempt() -> Steps[Outcome]:
            return self._attempt_once(fn, args, kwargs, ctx, tried)

        if self.retry_policy is None:
            outcome = yield from attempt()
            if outcome.error is not None:
                raise outcome.error
            return outcome.value
        return (yield from self.retry_policy._attempts(attempt))

    # -- statistics --------------------------------------------------------------------------

    def _statistics(self) -> Steps[Statistics]:
        yield from steps(self._refresh(force=True))
        per = []
        for b in self._snapshot:
            cb = self._breakers.get(b.id)
            state = "-" if self.breaker_settings is None else (
                cb._view.state or "closed" if cb is not None else "closed")
            per.append(BackendStats(
                b.id, b.address, b.weight, b.healthy, state, b.active_connections,
                int(self._stats.get(f"{b.id}:requests", 0)),
                int(self._stats.get(f"{b.id}:errors", 0)), b.error_rate, b.latency_ms,
                b.throughput_per_s))
        answered = [s for s in per if s.requests]
        avg = sum(s.latency_ms for s in answered) / len(answered) if answered else 0.0
        return Statistics(len(per), sum(s.healthy for s in per),
                          sum(s.active_connections for s in per), avg, tuple(per))

    # -- health checks -----------------------------------------------------------------------

    def _health_round(self, check: Callable[[Backend], Any], lease_s: float) -> Steps[int]:
        """If this process holds the checker role, probe every backend and publish changes.
        Returns how many backends changed health."""
        elected: int = yield Call(script("elect"), (_keys.part(self.key, "checker"),),
                                  (self._checker_id, math.ceil(lease_s * 1000)), int,
                                  lambda: 0, self._guard)
        if not elected:
            return 0
        yield from steps(self._refresh(force=True))
        changed = 0
        for b in self._snapshot:
            outcome: Outcome = yield Invoke(check, (b,), {})
            healthy = outcome.error is None and bool(outcome.value)
            if healthy != b.healthy:
                yield from self._set_health(b.id, healthy)
                changed += 1
        return changed


def _admitted(call: Call[Any]) -> Steps[None]:
    decision = yield call
    if not decision.allowed:
        raise RateLimited(decision.explanation, decision.retry_after_s)


__all__ = ["BackendExists", "BackendStats", "BreakerSettings", "Lease",
           "LoadBalancerCore", "Statistics", "UnknownBackend"]
