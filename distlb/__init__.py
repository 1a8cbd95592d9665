"""distlb: distributed load balancing and traffic shaping on one shared Redis/Valkey state.

Every process that imports distlb and points at the same server shares one
consistent view of limits; every change to that state is one atomic Lua script
run on the server's clock. ``distlb.aio`` has the same classes for asyncio.
"""

from distlb._keys import DEFAULT_PREFIX
from distlb.breaker import AdaptiveCircuitBreaker, BreakerGuard, CircuitBreaker
from distlb.errors import (
    CircuitOpen,
    ConfigError,
    DistlbError,
    RateLimited,
    RetryBudgetExhausted,
    StoreError,
)
from distlb.results import (
    Attempt,
    BreakerState,
    Decision,
    LeakyDecision,
    LimitState,
    PriorityDecision,
    Transition,
)
from distlb.retry import BudgetDecision, RetryBudget, RetryPolicy, RetryState
from distlb.shaping import LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PREFIX",
    "AdaptiveCircuitBreaker",
    "Attempt",
    "BreakerGuard",
    "BreakerState",
    "BudgetDecision",
    "CircuitBreaker",
    "CircuitOpen",
    "ConfigError",
    "Decision",
    "DistlbError",
    "LeakyBucket",
    "LeakyDecision",
    "Limit",
    "LimitState",
    "PriorityDecision",
    "PriorityLimiter",
    "RateLimited",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "RetryState",
    "StoreError",
    "TokenBucket",
    "TrafficShaper",
    "Transition",
]
