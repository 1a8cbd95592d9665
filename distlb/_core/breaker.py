"""Circuit breakers: plan ``breaker.lua`` calls, parse replies, the local view and twin."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from distlb._core.ops import Call, text
from distlb._scripts import script
from distlb.results import Attempt, BreakerState, Transition

BreakerOp = Literal["attempt", "success", "failure", "state", "force"]


@dataclass(frozen=True, slots=True)
class Config:
    """A breaker's settings, packed the way ``breaker.lua`` reads them."""

    rule: str           #: "count <failure_threshold>" or "rate <threshold> <window_ms> ..."
    #: "<open_timeout_ms> <success_threshold> <half_open_max> <lease_ms> <ttl_ms>"
    timing: str
    open_timeout_s: float


def plan(op: BreakerOp, keys: tuple[str, str, str], *, name: str, arg: str, channel: str,
         config: Config, parse_hook: Callable[[BreakerState], None],
         fallback: Callable[[], BreakerState], shed: int = 0) -> Call[BreakerState]:
    def parse(reply: Any) -> BreakerState:
        f = text(reply).split()
        st = BreakerState(
            name=name, state=f[1], forced=None if f[2] == "-" else f[2], failures=int(f[3]),
            successes=int(f[7]), probes_in_flight=int(f[8]), retry_after_s=int(f[6]) / 1000,
            version=int(f[4]), calls=int(f[9]), error_rate=float(f[10]),
            baseline=None if f[11] == "-" else float(f[11]), allowed=f[0] == "1",
            permit=None if f[5] == "-" else f[5], throttled=int(f[12]))
        parse_hook(st)
        return st

    args = (op, arg, channel, name, config.rule, config.timing, shed)
    return Call(script("breaker"), keys, args, parse, fallback)


class View:
    """This process's view of a breaker, kept fresh by replies and pub/sub events.

    It answers ``can_attempt()`` without a round trip while the breaker is
    known closed (or known open and not yet due to turn half-open), and lets
    ``record_success()`` skip the store while no failure is pending. It is
    fresh for ``max_staleness_s`` after the last reply, or for as long as the
    event subscription is healthy and was already up at that reply (events
    then carry every change within milliseconds).
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
        self.updated_at = 0.0
        self.half_open_at = 0.0
        self.listeners: list[Callable[[Transition], None]] = []

    def fresh(self, now: float, subscribed_since: float | None) -> bool:
        if self.state is None:
            return False
        if now - self.updated_at < self.max_staleness_s:
            return True
        return subscribed_since is not None and subscribed_since <= self.updated_at

    def fast_attempt(self, now: float, subscribed_since: float | None) -> Attempt | None:
        """The answer when it needs no round trip, else None."""
        if not self.fresh(now, subscribed_since):
            return None
        if self.forced == "closed" or (self.state == "closed" and self.forced is None):
            return Attempt(True, "closed", None, 0.0, "cache")
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
              retry_after_s: float | None, origin: str) -> Transition | None:
        """Take a newer state (older versions are ignored); report a transition."""
        now = self.clock()
        with self.lock:
            if version < self.version:
                return None
            before = self.state
            self.state, self.forced, self.failures = state, forced, failures
            self.version = version
            self.updated_at = now
            if state == "open":
                wait = self.open_timeout_s if retry_after_s is None else retry_after_s
                if before != "open" or retry_after_s is not None:
                    self.half_open_at = now + wait
        if before is not None and before != state:
            return Transition(self.name, before, state, version, origin)
        return None


class LocalBreaker:
    """The in-process twin for ``on_store_error="local"``: consecutive failures,
    open timeout and one probe at a time, on the local monotonic clock."""

    def __init__(self, failure_threshold: int, open_timeout_s: float,
                 success_threshold: int, clock: Callable[[], float]) -> None:
        self.failure_threshold = failure_threshold
        self.open_timeout_s = open_timeout_s
        self.success_threshold = success_threshold
        self.clock = clock
        self.lock = threading.Lock()
        self.state = "closed"
        self.failures = self.successes = 0
        self.opened_at = 0.0
        self.probing = False

    def _tick(self, now: float) -> None:
        if self.state == "open" and now >= self.opened_at + self.open_timeout_s:
            self.state, self.successes, self.probing = "half_open", 0, False

    def attempt(self) -> Attempt:
        with self.lock:
            now = self.clock()
            self._tick(now)
            if self.state == "closed":
                return Attempt(True, "closed", None, 0.0, "local")
            if self.state == "half_open" and not self.probing:
                self.probing = True
                return Attempt(True, "half_open", "local", 0.0, "local")
            wait = max(0.0, self.opened_at + self.open_timeout_s - now)
            return Attempt(False, self.state, None, wait, "local")

    def record(self, failed: bool) -> None:
        with self.lock:
            now = self.clock()
            self._tick(now)
            if self.state == "closed":
                self.failures = self.failures + 1 if failed else 0
                if self.failures >= self.failure_threshold:
                    self.state, self.opened_at = "open", now
            elif self.state == "half_open":
                self.probing = False
                if failed:
                    self.state, self.opened_at = "open", now
                else:
                    self.successes += 1
                    if self.successes >= self.success_threshold:
                        self.state, self.failures = "closed", 0

    def snapshot(self, name: str) -> BreakerState:
        with self.lock:
            return BreakerState(name, self.state, None, self.failures, self.successes,
                                int(self.probing), 0.0, 0, source="local")
