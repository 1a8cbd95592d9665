"""Circuit breakers: plan ``breaker.lua`` calls, parse replies, the local view and twin."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from distlb._core.guard import StoreGuard
from distlb._core.ops import Call, text
from distlb._core.scripts import script
from distlb.results import Attempt, BreakerState, Transition

BreakerOp = Literal["attempt", "success", "failure", "state", "force"]


@dataclass(frozen=True, slots=True)
class Config:
    """A breaker's settings, packed the way ``breaker.lua`` reads them."""

    rule: str           #: "count <failure_threshold>" or "rate <threshold> <window_ms> ..."
    #: "<open_timeout_ms> <success_threshold> <half_open_max> <lease_ms> <ttl_ms>"
    timing: str
    open_timeout_s: float


#: A transition a script call made: (from_state, to_state, version).
Change = tuple[str, str, int]


def parse_transitions(field: str) -> tuple[Change, ...]:
    """``"closed>open@1712..,open>half_open@1712.."`` (or ``"-"``) from a reply."""
    if field == "-":
        return ()
    out = []
    for item in field.split(","):
        moves, _, version = item.partition("@")
        before, _, after = moves.partition(">")
        out.append((before, after, int(version)))
    return tuple(out)


def plan(op: BreakerOp, keys: tuple[str, str, str], *, name: str, arg: str, channel: str,
         config: Config, parse_hook: Callable[[BreakerState, tuple[Change, ...]], None],
         fallback: Callable[[], BreakerState], shed: int = 0, period: int | None = None,
         owner: StoreGuard | None = None) -> Call[BreakerState]:
    """``period``: for a result without a permit, the closed period its call was
    admitted in (``Attempt.period``); None: unknown, it counts in the current one."""
    def parse(reply: Any) -> BreakerState:
        f = text(reply).split()
        st = BreakerState(
            name=name, state=f[1], forced=None if f[2] == "-" else f[2], failures=int(f[3]),
            successes=int(f[7]), probes_in_flight=int(f[8]), retry_after_s=int(f[6]) / 1000,
            version=int(f[4]), calls=int(f[9]), error_rate=float(f[10]),
            baseline=None if f[11] == "-" else float(f[11]), allowed=f[0] == "1",
            permit=None if f[5] == "-" else f[5], throttled=int(f[12]),
            period=int(f[14]) if len(f) > 14 else None)
        parse_hook(st, parse_transitions(f[13]))
        return st

    args = (op, arg, channel, name, config.rule, config.timing, shed,
            "" if period is None else str(period))
    return Call(script("breaker"), keys, args, parse, fallback, owner)


class View:
    """This process's view of a breaker, kept fresh by replies and pub/sub events.

    It answers ``can_attempt()`` without a round trip while the breaker is
    known closed (or known open and not yet due to turn half-open), and lets
    ``record_success()`` skip the store while no failure is pending. It is
    fresh for ``max_staleness_s`` after the last update, or for as long as the
    event subscription that was already up when that update was read is still
    up and healthy (events then carry every change within milliseconds). The
    subscription is compared by identity, never by comparing two clocks.

    When the breaker may turn half-open is always measured on the server clock
    (replies and events carry the remaining milliseconds at that moment) and
    mapped once onto this process's clock when the update arrives, so every
    process follows the server's timing alike, whatever its own clock does.

    Transitions: every update carries its version (server time, exact), and
    the view reports each transition once: those a call of this process made
    (named in its reply, even on first contact), those other processes made
    (named in their events), and, when updates were missed (a subscription
    gap), the change between the last known state and the next one seen.
    """

    def __init__(self, name: str, open_timeout_s: float, max_staleness_s: float,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.open_timeout_s = open_timeout_s
        self.max_staleness_s = max_staleness_s
        self.clock = clock
        self.lock = threading.Lock()
        self.state: str | None = None     # None: never seen; ask the store
        self.forced: str | None = None
        self.failures = 0
        self.version = -1
        #: the closed period of the last update (None: unknown), given to closed attempts
        self.period: int | None = None
        self.updated_at = 0.0
        self.half_open_at = 0.0
        #: the subscription (its start, as the bus reports it) that was up when the last
        #: update was read; None: none was
        self.subscription: float | None = None

    def fresh(self, now: float, subscribed_since: float | None) -> bool:
        if self.state is None:
            return False
        if now - self.updated_at < self.max_staleness_s:
            return True
        return subscribed_since is not None and subscribed_since == self.subscription

    def fast_attempt(self, now: float, subscribed_since: float | None) -> Attempt | None:
        """The answer when it needs no round trip, else None."""
        if not self.fresh(now, subscribed_since):
            return None
        if self.forced == "closed" or (self.state == "closed" and self.forced is None):
            return Attempt(True, "closed", None, 0.0, "cache", self.period)
        if self.forced == "open":
            return Attempt(False, "open", None, 0.0, "cache")
        if self.state == "open" and now < self.half_open_at:
            return Attempt(False, "open", None, self.half_open_at - now, "cache")
        return None

    def success_is_news(self, now: float, subscribed_since: float | None) -> bool:
        """Whether a success must reach the store (to reset failures or close a probe)."""
        return not (self.fresh(now, subscribed_since) and self.state == "closed"
                    and self.failures == 0)

    def apply(self, state: str, forced: str | None, failures: int, version: int,
              half_open_in_s: float | None, origin: str, changes: tuple[Change, ...] = (),
              subscription: float | None = None,
              period: int | None = None) -> list[Transition]:
        """Take an update (older versions are ignored); return the transitions to report.

        ``half_open_in_s``: while open, the time until it may turn half-open, measured on
        the server when the update was made (None: unknown, e.g. an old publisher).
        ``changes``: the transitions the update names (a reply: every one its call made;
        an event: its own). ``subscription``: the bus subscription that was up, unbroken,
        from before the update was made until it was read (None if none was). ``period``:
        the closed period the update names (None: unknown).
        """
        now = self.clock()
        out: list[Transition] = []
        with self.lock:
            if version < self.version:
                return out                    # older than what this view already holds
            before = self.state
            newer = version > self.version
            if newer:
                # Only changes newer than the view are news; older ones were reported (or
                # folded into a reported change) when a newer update arrived first.
                new = [c for c in changes if c[0] != c[1] and c[2] > self.version]
                start = new[0][0] if new else state
                if before is not None and before != start:
                    out.append(Transition(self.name, before, start, version, origin))
                out.extend(Transition(self.name, a, b, v, origin) for a, b, v in new)
            self.state, self.forced, self.failures = state, forced, failures
            self.version = version
            self.period = period
            self.updated_at = now
            self.subscription = subscription
            if state == "open":
                if half_open_in_s is not None:
                    # Each estimate is late by its delivery time (an event may be read long
                    # after it was published): of the same version's, keep the earliest.
                    at = now + half_open_in_s
                    self.half_open_at = at if newer else min(self.half_open_at, at)
                elif newer and before != "open":
                    self.half_open_at = now + self.open_timeout_s
        return out


class LocalBreaker:
    """The in-process twin for ``on_store_error="local"``: consecutive failures,
    open timeout and one probe at a time, on the local monotonic clock.

    As in ``breaker.lua``, a result counts only in the period that admitted its call:
    a probe's (its permit, unique per probe) only while it is the probe in flight, any
    other only while closed, in the closed period that admitted it (``Attempt.period``:
    the twin numbers its closed periods); late results change nothing."""

    def __init__(self, failure_threshold: int, open_timeout_s: float,
                 success_threshold: int, clock: Callable[[], float],
                 on_transition: Callable[[str, str], None] | None = None) -> None:
        self.failure_threshold = failure_threshold
        #: called with (from_state, to_state) after each change, outside the lock
        self.on_transition = on_transition
        self.open_timeout_s = open_timeout_s
        self.success_threshold = success_threshold
        self.clock = clock
        self.lock = threading.Lock()
        self.state = "closed"
        self.failures = self.successes = 0
        self.opened_at = 0.0
        self.probe: str | None = None   # the permit of the probe in flight
        self.permits = 0                # probes handed out (each permit is unique)
        self.period = 0                 # closed periods so far (each close starts one)

    def _tick(self, now: float, moves: list[tuple[str, str]]) -> None:
        if self.state == "open" and now >= self.opened_at + self.open_timeout_s:
            self._move("half_open", moves)
            self.successes, self.probe = 0, None

    def _move(self, to: str, moves: list[tuple[str, str]]) -> None:
        if to != self.state:
            moves.append((self.state, to))
        self.state = to

    def _report(self, moves: list[tuple[str, str]]) -> None:
        if self.on_transition is not None:
            for before, after in moves:
                self.on_transition(before, after)

    def attempt(self) -> Attempt:
        moves: list[tuple[str, str]] = []
        try:
            with self.lock:
                now = self.clock()
                self._tick(now, moves)
                if self.state == "closed":
                    return Attempt(True, "closed", None, 0.0, "local", self.period)
                if self.state == "half_open" and self.probe is None:
                    self.permits += 1
                    self.probe = f"local-{self.permits}"
                    return Attempt(True, "half_open", self.probe, 0.0, "local")
                wait = max(0.0, self.opened_at + self.open_timeout_s - now)
                return Attempt(False, self.state, None, wait, "local")
        finally:
            self._report(moves)

    def record(self, failed: bool, permit: str | None = None,
               period: int | None = None) -> None:
        """Record a result; ``permit``: the probe permit its attempt got (None: none);
        ``period``: the twin's closed period that admitted it (None: unknown, counts)."""
        moves: list[tuple[str, str]] = []
        with self.lock:
            now = self.clock()
            self._tick(now, moves)
            if permit:
                # Only the probe in flight counts; a late one (of an earlier half-open
                # period, or after the twin moved on) changes nothing.
                if self.state == "half_open" and permit == self.probe:
                    self.probe = None
                    if failed:
                        self._move("open", moves)
                        self.opened_at = now
                    else:
                        self.successes += 1
                        if self.successes >= self.success_threshold:
                            self._move("closed", moves)
                            self.failures = 0
                            self.period += 1
            elif self.state == "closed" and (period is None or period == self.period):
                self.failures = self.failures + 1 if failed else 0
                if self.failures >= self.failure_threshold:
                    self._move("open", moves)
                    self.opened_at = now
        self._report(moves)

    def snapshot(self, name: str) -> BreakerState:
        with self.lock:
            return BreakerState(name, self.state, None, self.failures, self.successes,
                                int(self.probe is not None), 0.0, 0, source="local")
