"""Backend-selection strategies: pure, local code (no I/O), pluggable.

| strategy | pick cost | best for |
|---|---|---|
| ``RoundRobinBalancer`` | O(1) | identical backends |
| ``WeightedRoundRobinBalancer`` | O(log n) | fixed capacity ratios, exact shares |
| ``SmoothWeightedRoundRobinBalancer`` | O(n) | weighted shares without bursts |
| ``LeastConnectionsBalancer`` | O(n) | long or uneven requests |
| ``WeightedLeastConnectionsBalancer`` | O(n) | uneven capacities; slow start |
| ``PowerOfTwoChoicesBalancer`` | O(1) | least-connections balance at scale |
| ``ConsistentHashBalancer`` | O(log(n x vnodes)) | affinity (caches, sessions) |
| ``RendezvousHashBalancer`` | O(n) | affinity with few backends, no ring |
| ``MaglevBalancer`` | O(1) | affinity at high rates, even spread |
| ``AdaptiveBalancer`` | O(n) | mixed health signals, trends |
| ``PeakEwmaBalancer`` | O(1) | latency-sensitive traffic |
| ``LocalityAwareBalancer(inner)`` | O(n) | zones and regions: stay local, spill over |
| ``CostAwareBalancer`` | O(n) | backends of different prices |

Any object with ``select(backends, ctx) -> Backend`` is a strategy (``Strategy``). The
parameters a pool's fleet-wide configuration may change (``strategy.<name>``) are the
ones it declares in ``config_params`` (``Param``: name, int/float, range).
"""

from distlb.strategies.adaptive import AdaptiveBalancer, PeakEwmaBalancer, ScoringConfig
from distlb.strategies.base import Backend, Context, NoBackendAvailable, Param, Strategy
from distlb.strategies.consistent_hash import (
    ConsistentHashBalancer,
    MaglevBalancer,
    RendezvousHashBalancer,
)
from distlb.strategies.cost import CostAwareBalancer
from distlb.strategies.least_conn import (
    LeastConnectionsBalancer,
    PowerOfTwoChoicesBalancer,
    WeightedLeastConnectionsBalancer,
)
from distlb.strategies.locality import Locality, LocalityAwareBalancer
from distlb.strategies.round_robin import (
    RoundRobinBalancer,
    SmoothWeightedRoundRobinBalancer,
    WeightedRoundRobinBalancer,
)

__all__ = [
    "AdaptiveBalancer",
    "Backend",
    "ConsistentHashBalancer",
    "Context",
    "CostAwareBalancer",
    "LeastConnectionsBalancer",
    "Locality",
    "LocalityAwareBalancer",
    "MaglevBalancer",
    "NoBackendAvailable",
    "Param",
    "PeakEwmaBalancer",
    "PowerOfTwoChoicesBalancer",
    "RendezvousHashBalancer",
    "RoundRobinBalancer",
    "ScoringConfig",
    "SmoothWeightedRoundRobinBalancer",
    "Strategy",
    "WeightedLeastConnectionsBalancer",
    "WeightedRoundRobinBalancer",
]
