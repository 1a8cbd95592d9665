"""Token buckets: plan ``bucket.lua`` calls, parse replies, and the local twin."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from distlb import _observe
from distlb._core.guard import StoreGuard
from distlb._core.local import LocalState
from distlb._core.ops import Call, Done, Op, text
from distlb._core.scripts import Arg, script
from distlb.results import Decision, LimitState, one_limit_decision

log = logging.getLogger("distlb")
Mode = Literal["take", "peek"]
MAX_BUCKETS = 16


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One bucket of a check: where it lives, its default limit, and this request's cost.

    ``rate_per_s == 0`` with no shared override means "no limit" (the bucket is
    skipped). ``field`` names the entry of the limits hash that overrides
    ``rate_per_s``/``burst`` for the whole fleet.
    """

    key: str
    label: str
    rate_per_s: float
    burst: float
    cost: float
    field: str = ""


def plan(mode: Mode, specs: Sequence[BucketSpec], *, limits_key: str | None,
         limits_ttl_ms: int, fallback: Callable[[], Decision],
         on_conflict: Callable[[], None], owner: StoreGuard | None = None,
         observe: Callable[[Decision, float], None] | None = None,
         rank: tuple[str, str] | None = None) -> Call[Decision]:
    """The ``bucket.lua`` call checking (and with ``take``, charging) every spec at once.

    A shaper's calls carry its limits hash (``limits_key``) and, with a priority,
    ``rank``: ``(priority hash key, "<level> <reserve per level> <starve us> <window
    us>")`` (see ``distlb._core.admission.priority_policy``)."""
    keys = [s.key for s in specs]
    head = f"{mode} {limits_ttl_ms if limits_key else 0}"
    if rank is not None:
        head = f"{head} {rank[1]}"
    args: list[Arg] = [head.encode()]
    if limits_key:
        keys.append(limits_key)
    if rank is not None:
        keys.append(rank[0])
    for s in specs:
        args.append(f"{s.rate_per_s!r} {s.burst!r} {s.cost!r} {s.field}".rstrip().encode())

    labels = [s.label for s in specs]
    # Metrics name the kind of limit ("client"), not whose it is ("client:alice").
    kinds = {s.label: s.label.partition(":")[0] if s.field else "bucket" for s in specs}

    def parse(reply: Any) -> Decision:
        f = text(reply).split()
        if f[1] == "1":
            on_conflict()
        states = []
        for i in range(2, len(f), 6):
            # reset_after_s = (burst - remaining) / rate: the script's own arithmetic on
            # the same doubles (each field is round-trip exact), so it is not sent
            remaining, rate, burst = float(f[i + 2]), float(f[i + 4]), float(f[i + 5])
            states.append(LimitState(labels[int(f[i]) - 1], f[i + 1] == "1", remaining,
                                     float(f[i + 3]), (burst - remaining) / rate, rate, burst))
        decision = Decision.from_limits(tuple(states))
        _observe.decision("bucket", decision.allowed, kinds.get(decision.limit, "bucket"),
                          decision.limit)
        return decision

    if len(specs) == 1:  # the common case (a TokenBucket, a global-only shaper), kept lean
        label, kind = labels[0], kinds[labels[0]]

        def parse_one(reply: Any) -> Decision:
            f = (reply.decode() if type(reply) is bytes else str(reply)).split()
            if len(f) != 8:  # the bucket was skipped (no limit): the general path says so
                return parse(reply)
            if f[1] == "1":
                on_conflict()
            allowed = f[3] == "1"
            remaining, rate, burst = float(f[4]), float(f[6]), float(f[7])
            _observe.decision("bucket", allowed, kind, label)
            return one_limit_decision(label, allowed, remaining, float(f[5]),
                                      (burst - remaining) / rate, rate, burst)

        return Call(script("bucket"), tuple(keys), tuple(args), parse_one, fallback, owner,
                    observe)
    return Call(script("bucket"), tuple(keys), tuple(args), parse, fallback, owner, observe)


class DenyCache:
    """Denials the store gave, answered in-process until they expire ("denials for free").

    A token bucket only refills with time: once the store says "denied, retry after
    r" for a cost c, every request of cost >= c is denied until then, whatever other
    processes do (they only take tokens). So the process answers those requests
    itself, with ``source="cache"``, and a flood of denied requests costs no round
    trip. The deadline is ``r`` after the owner's clock read *before* the call left,
    which is no later than the moment the script ran: the cache never denies past
    the store's own answer (clocks apart from drift, parts per million).

    What can make the true wait shorter, and the rule: a ``reset()`` (it refills)
    or, for a shaper, a ``set_global_limit`` that raises the limit. Done by this
    object, either clears the cache at once; done by another process, it takes
    effect here at the latest when the cached denial expires (at most its
    ``retry_after_s``, which is at most ``cost / rate_per_s``). Only the single
    bucket of a ``TokenBucket`` and a ``TrafficShaper`` call with only the global
    limit are cached: per-client limits change without a reset of the global
    bucket, so they always ask the store.

    Priorities (a shaper's ``priority=``): a denial by the reserve held for higher
    levels says nothing about a higher level, and the reserve can end sooner than its
    wait (the higher level stops asking, or aging). So only what a denial says for
    every level is kept: that the bucket lacks the ``cost`` itself, until it has
    refilled it (``(cost - remaining) / rate``, the wait without any reserve). A
    denial by the reserve alone (``remaining >= cost``) is not cached at all.
    """

    __slots__ = ("clock", "entry")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        #: (until, cost, the store's denial): one tuple, so a reader in another thread
        #: never pairs one denial's cost with another's deadline.
        self.entry: tuple[float, float, Decision] | None = None

    def observer(self, cost: float, ranked: bool = False) -> Callable[[Decision, float], None]:
        """The ``observe`` hook of a call of ``cost``: remember its denials. ``ranked``:
        the call had a priority; keep only the part of a denial that holds at every
        level (see the class docstring)."""
        def observe(d: Decision, sent: float) -> None:
            if d.allowed or d.source != "store" or not 0 < d.retry_after_s < math.inf:
                return
            wait = d.retry_after_s
            if ranked:
                if d.remaining >= cost or len(d.limits) != 1:
                    return                      # the reserve denied it, not the tokens
                wait = min(wait, (cost - d.remaining) / d.limits[0].rate_per_s)
            until = sent + wait
            old = self.entry
            # A cheaper denial covers more requests; an expired one covers none.
            if old is None or cost <= old[1] or old[0] <= sent:
                self.entry = (until, cost, d)
        return observe

    def check(self, cost: float) -> Decision | None:
        """The cached denial of a request of ``cost``, or None: ask the store."""
        entry = self.entry
        if entry is None or cost < entry[1]:
            return None
        left = entry[0] - self.clock()
        if left <= 0:
            self.entry = None
            return None
        d = entry[2]
        _observe.decision("bucket", False, "bucket", d.limit)
        return Decision(False, d.remaining, left, d.reset_after_s, d.limit, d.limits, "cache")

    def answer(self, call: Call[Decision], cost: float) -> Op[Decision]:
        """``call``, or, while a denial of the store covers a request of ``cost``, that
        denial (``source="cache"``) without a round trip: the one short-circuit every
        cached limiter (``TokenBucket``, ``TrafficShaper``) takes."""
        if self.entry is not None:
            denied = self.check(cost)
            if denied is not None:
                return Done(denied)
        return call

    def clear(self) -> None:
        self.entry = None


def warn_conflict_once(what: str) -> Callable[[], None]:
    """A conflict callback that logs once: two processes configure one bucket differently."""
    warned = False

    def warn() -> None:
        nonlocal warned
        if not warned:
            warned = True
            log.warning("%s is stored with a different rate or burst than this process "
                        "was configured with; each process applies its own settings to its "
                        "calls. Configure every process alike.", what)

    return warn


class LocalBuckets:
    """The local twin of ``bucket.lua``, at the given rates divided by ``share``."""

    def __init__(self, share: int, state: LocalState | None = None) -> None:
        self.share = share
        self.state = state or LocalState()

    def decide(self, mode: Mode, specs: Sequence[BucketSpec]) -> Decision:
        specs = [replace(s, rate_per_s=s.rate_per_s / self.share,
                         burst=max(s.burst / self.share, s.cost))
                 for s in specs if s.rate_per_s > 0]
        st = self.state
        with st.lock:
            now = st.clock()
            tokens = []
            for s in specs:
                level, ts = st.data.get(s.key, (s.burst, now))
                tokens.append(min(s.burst, level + max(0.0, now - ts) * s.rate_per_s))
            ok = [t >= s.cost for t, s in zip(tokens, specs, strict=True)]
            if mode == "take" and all(ok):
                for i, s in enumerate(specs):
                    tokens[i] -= s.cost
                    st.data[s.key] = [tokens[i], now]
        states = tuple(
            LimitState(s.label, k, t, 0.0 if k else (s.cost - t) / s.rate_per_s,
                       (s.burst - t) / s.rate_per_s, s.rate_per_s, s.burst)
            for s, t, k in zip(specs, tokens, ok, strict=True)
        )
        return replace(Decision.from_limits(states), source="local")


def fixed(allowed: bool, retry_after_s: float, source: str) -> Decision:
    """The decision of the fail_open / fail_closed policies."""
    return Decision(allowed, math.inf if allowed else 0.0, 0.0 if allowed else retry_after_s,
                    0.0, "store", (), source)
