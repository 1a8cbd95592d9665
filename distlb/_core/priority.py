"""Priority limiter: plan ``priority.lua`` calls and parse replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from distlb import _observe
from distlb._core.guard import StoreGuard
from distlb._core.ops import Call, num, text
from distlb._core.scripts import script
from distlb.results import PriorityDecision

Mode = Literal["poll", "try", "cancel"]


def plan(mode: Mode, keys: tuple[str, str, str, str], *, ticket: str, level: int,
         rate_per_s: float, burst: float, cost: float, max_depth: int, aging_s: float,
         lease_ms: int, fallback: Callable[[], PriorityDecision],
         owner: StoreGuard | None = None) -> Call[PriorityDecision]:
    def parse(reply: Any) -> PriorityDecision:
        decision = PriorityDecision(bool(int(reply[0])), text(reply[1]), num(reply[2]),
                                    int(reply[3]), num(reply[4]))
        if decision.status != "queued":
            _observe.decision("priority", decision.allowed, decision.status)
        return decision

    args = (mode, ticket, level, repr(rate_per_s), repr(burst), repr(cost), max_depth,
            repr(aging_s), lease_ms)
    return Call(script("priority"), keys, args, parse, fallback, owner)
