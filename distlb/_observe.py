"""Observation hooks: no-ops until ``distlb.metrics.enable()`` replaces them.

Library code calls these at the points worth counting; the metrics module (an
optional extra) decides what to do with them. Disabled, each costs one call of
an empty function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _nothing(*args: Any) -> None:
    return None


#: decision(limiter, allowed, reason, detail=None): a limiter decided (limiter = script name,
#: reason = the kind of the denying limit, e.g. "client"; detail = which one, e.g.
#: "client:alice": unbounded, so metrics label with it only when the user opts in)
decision: Callable[..., None] = _nothing
#: store_error(primitive): the store was unreachable for a call (primitive: "token bucket
#: 'api'", kind and name)
store_error: Callable[..., None] = _nothing
#: fallback(primitive, policy): a failure policy answered instead of the store
fallback: Callable[..., None] = _nothing
#: breaker(name, from_state, to_state, pool=None): this process saw a breaker change state
#: (pool: the load balancer pool whose backend it guards, if any)
breaker: Callable[..., None] = _nothing
#: retry(outcome): "retried", "budget_denied" or "gave_up"
retry: Callable[..., None] = _nothing
#: selection(pool, backend): the load balancer sent a call to a backend (backend: an id)
selection: Callable[..., None] = _nothing
