"""distlb for asyncio: the same names as ``distlb``, with awaitable methods.

Pass a ``redis.asyncio`` client (``Redis``, ``RedisCluster`` or a Sentinel
master). Results, errors, options, ``Limit`` and the strategies are the sync
package's own objects; ``connect`` builds a ``redis.asyncio`` client.

GENERATED from distlb/__init__.py by tools/gen_aio.py: do not edit.
"""

from distlb._connect import connect_async as connect
from distlb._keys import DEFAULT_PREFIX
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
from distlb.aio.shaping import LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper
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
from distlb.strategies import (
    AdaptiveBalancer,
    Backend,
    ConsistentHashBalancer,
    Context,
    CostAwareBalancer,
    LeastConnectionsBalancer,
    LocalityAwareBalancer,
    MaglevBalancer,
    NoBackendAvailable,
    PeakEwmaBalancer,
    PowerOfTwoChoicesBalancer,
    RendezvousHashBalancer,
    RoundRobinBalancer,
    ScoringConfig,
    SmoothWeightedRoundRobinBalancer,
    Strategy,
    WeightedLeastConnectionsBalancer,
    WeightedRoundRobinBalancer,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PREFIX",
    "AdaptiveBalancer",
    "AdaptiveCircuitBreaker",
    "Attempt",
    "Backend",
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
    "ConsistentHashBalancer",
    "Context",
    "CostAwareBalancer",
    "Decision",
    "DistlbError",
    "LeakyBucket",
    "LeakyDecision",
    "LeastConnectionsBalancer",
    "Limit",
    "LimitState",
    "LoadBalancer",
    "LoadBalancerContext",
    "LocalityAwareBalancer",
    "MaglevBalancer",
    "NoBackendAvailable",
    "PeakEwmaBalancer",
    "PowerOfTwoChoicesBalancer",
    "PriorityDecision",
    "PriorityLimiter",
    "RateLimited",
    "RendezvousHashBalancer",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "RetryState",
    "RoundRobinBalancer",
    "ScoringConfig",
    "SmoothWeightedRoundRobinBalancer",
    "Statistics",
    "StoreAuthError",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "Strategy",
    "TimingOptions",
    "TokenBucket",
    "TrafficShaper",
    "Transition",
    "UnknownBackend",
    "WeightedLeastConnectionsBalancer",
    "WeightedRoundRobinBalancer",
    "connect",
]
