"""distlb for asyncio: the same class names as ``distlb``, with awaitable methods.

Pass a ``redis.asyncio`` client (``Redis``, ``RedisCluster`` or a Sentinel
master). Results, errors and ``Limit`` are shared with the sync package.
"""

from distlb._connect import connect_async as connect
from distlb._shared import StoreOptions, TimingOptions
from distlb.aio.balancer import (
    BackendExists,
    BackendStats,
    BreakerSettings,
    ConnectionGuard,
    LoadBalancer,
    LoadBalancerContext,
    Statistics,
    UnknownBackend,
)
from distlb.aio.breaker import AdaptiveCircuitBreaker, BreakerGuard, CircuitBreaker
from distlb.aio.retry import BudgetDecision, RetryBudget, RetryPolicy, RetryState
from distlb.aio.shaping import LeakyBucket, PriorityLimiter, TokenBucket, TrafficShaper
from distlb.errors import (
    CircuitOpen,
    ConfigError,
    DistlbError,
    RateLimited,
    RetryBudgetExhausted,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
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
from distlb.shaping import Limit

__all__ = [
    "AdaptiveCircuitBreaker",
    "Attempt",
    "BackendExists",
    "BackendStats",
    "BreakerGuard",
    "BreakerSettings",
    "BreakerState",
    "BudgetDecision",
    "CircuitBreaker",
    "CircuitOpen",
    "ConfigError",
    "ConnectionGuard",
    "Decision",
    "DistlbError",
    "LeakyBucket",
    "LeakyDecision",
    "Limit",
    "LimitState",
    "LoadBalancer",
    "LoadBalancerContext",
    "PriorityDecision",
    "PriorityLimiter",
    "RateLimited",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "RetryState",
    "Statistics",
    "StoreAuthError",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "TimingOptions",
    "TokenBucket",
    "TrafficShaper",
    "Transition",
    "UnknownBackend",
    "connect",
]
