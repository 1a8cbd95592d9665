"""distlb: distributed load balancing and traffic shaping on one shared Redis/Valkey state.

Every process that imports distlb and points at the same server shares one
consistent view of limits; every change to that state is one atomic Lua script
run on the server's clock. ``distlb.aio`` has the same classes for asyncio.
"""

from distlb._connect import connect
from distlb._keys import DEFAULT_PREFIX
from distlb._shared import StoreOptions, TimingOptions
from distlb.balancer import (
    BackendExists,
    BackendStats,
    BreakerSettings,
    ConnectionGuard,
    LoadBalancer,
    LoadBalancerContext,
    Statistics,
    UnknownBackend,
)
from distlb.breaker import AdaptiveCircuitBreaker, BreakerGuard, CircuitBreaker
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
from distlb.retry import BudgetDecision, RetryBudget, RetryPolicy, RetryState
from distlb.shaping import LeakyBucket, Limit, PriorityLimiter, TokenBucket, TrafficShaper
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
