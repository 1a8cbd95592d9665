"""The peer libraries, set up against the same server, for side-by-side figures.

Each entry is ``label -> (make, semantics)``: ``make(url, prefix, rate_per_s, burst)``
returns a zero-argument callable that makes one decision on one key, through the
peer's own Redis storage. Peers that are not installed (``pip install '.[bench]'``)
are left out and named as missing, so a run without them still prints every
distlb figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Decide = Callable[[], Any]
Make = Callable[[str, str, float, float], Decide]


def _limits(strategy: str) -> Make:
    def make(url: str, prefix: str, rate: float, burst: float) -> Decide:
        from limits import RateLimitItemPerSecond, storage, strategies

        st = storage.RedisStorage(url, key_prefix=f"{prefix}limits")
        limiter = getattr(strategies, strategy)(st)
        # limits has no burst: a window of one second holding ``rate`` hits.
        item = RateLimitItemPerSecond(max(1, int(rate)))
        key = f"{strategy}"
        return lambda: limiter.hit(item, key)
    return make


def _throttled(algo: str) -> Make:
    def make(url: str, prefix: str, rate: float, burst: float) -> Decide:
        from throttled import Throttled, rate_limiter, store

        quota = rate_limiter.per_sec(max(1, int(rate)), burst=max(1, int(burst)))
        t = Throttled(key=f"{prefix}:throttled:{algo}", using=algo, quota=quota,
                      store=store.RedisStore(server=url))
        return lambda: not t.limit().limited
    return make


def _pyrate(url: str, prefix: str, rate: float, burst: float) -> Decide:
    import pyrate_limiter as prl
    import redis

    r = redis.Redis.from_url(url)
    bucket = prl.RedisBucket.init([prl.Rate(max(1, int(rate)), prl.Duration.SECOND)], r,
                                  f"{prefix}:pyrate")
    limiter = prl.Limiter(bucket)
    return lambda: limiter.try_acquire("item", blocking=False)


#: Limiters, by the algorithm each one implements.
LIMITERS: dict[str, tuple[Make, str]] = {
    "limits moving window": (_limits("MovingWindowRateLimiter"), "sliding log"),
    "limits fixed window": (_limits("FixedWindowRateLimiter"), "fixed window"),
    "limits sliding window counter": (_limits("SlidingWindowCounterRateLimiter"),
                                      "approximate sliding window"),
    "throttled-py token bucket": (_throttled("token_bucket"), "token bucket"),
    "throttled-py GCRA": (_throttled("gcra"), "GCRA (token bucket)"),
    "throttled-py fixed window": (_throttled("fixed_window"), "fixed window"),
    "pyrate-limiter RedisBucket": (_pyrate, "sliding log"),
}


def available(make: Make, url: str, prefix: str) -> Decide | None:
    """The peer's decision callable, or None when the peer is not installed."""
    try:
        decide = make(url, prefix, 1e6, 1e6)
        decide()
    except ImportError:
        return None
    return decide


def pybreaker_closed(url: str, prefix: str) -> Decide | None:
    """pybreaker with its Redis state storage: a call through a closed breaker."""
    try:
        import pybreaker
    except ImportError:
        return None
    import redis

    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis.Redis.from_url(url),
                                            namespace=f"{prefix}:pybreaker")
    breaker = pybreaker.CircuitBreaker(state_storage=storage)
    return lambda: breaker.call(lambda: None)
