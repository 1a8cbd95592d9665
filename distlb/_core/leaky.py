"""Leaky buckets: plan ``leaky.lua`` calls, parse replies, and the local twin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from distlb import _observe
from distlb._core.guard import StoreGuard
from distlb._core.local import LocalState
from distlb._core.ops import Call, text
from distlb._core.scripts import script
from distlb.results import LeakyDecision


def plan(mode: Literal["take", "peek"], key: str, rate_per_s: float, capacity: float,
         cost: float, *, fallback: Callable[[], LeakyDecision],
         on_conflict: Callable[[], None],
         owner: StoreGuard | None = None) -> Call[LeakyDecision]:
    def parse(reply: Any) -> LeakyDecision:
        f = text(reply).split()
        if f[4] == "1":
            on_conflict()
        decision = LeakyDecision(f[0] == "1", float(f[1]), float(f[2]), float(f[3]))
        _observe.decision("leaky", decision.allowed, "queue_full")
        return decision

    args = (mode, repr(rate_per_s), repr(capacity), repr(cost))
    return Call(script("leaky"), (key,), args, parse, fallback, owner)


class LocalLeaky:
    """The local twin of ``leaky.lua`` at ``rate_per_s / share``."""

    def __init__(self, share: int, state: LocalState | None = None) -> None:
        self.share = share
        self.state = state or LocalState()

    def decide(self, mode: str, key: str, rate_per_s: float, capacity: float,
               cost: float) -> LeakyDecision:
        rate = rate_per_s / self.share
        st = self.state
        with st.lock:
            now = st.clock()
            next_at = max(now, st.data.get(key, [now])[0])
            wait = next_at - now
            queued = wait * rate
            if queued + cost > capacity * (1 + 1e-12) + rate * 1e-6:  # as leaky.lua
                return LeakyDecision(False, wait, queued, (queued + cost - capacity) / rate,
                                     "local")
            if mode == "take":
                st.data[key] = [next_at + cost / rate]
                queued += cost
        return LeakyDecision(True, wait, queued, 0.0, "local")
