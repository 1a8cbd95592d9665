"""Asyncio twin of ``distlb.shaping``: the same classes and methods, awaited.

Use a ``redis.asyncio`` client. Concurrent calls from many tasks are coalesced
into pipelines: one round trip carries many decisions, each still its own
atomic script.

GENERATED from distlb/shaping.py by tools/gen_aio.py: do not edit.
"""

from __future__ import annotations

from typing import Any

from distlb import _shaping
from distlb._shaping import Limit
from distlb._shell import AsyncShared
from distlb.results import Decision, LeakyDecision, PriorityDecision

__all__ = ["LeakyBucket", "Limit", "PriorityLimiter", "TokenBucket", "TrafficShaper"]


class TokenBucket(AsyncShared, _shaping.TokenBucketCore):
    __doc__ = _shaping.TokenBucketCore.__doc__

    async def try_acquire(self, cost: float = 1) -> Decision:
        """Take ``cost`` tokens if available now; never waits."""
        return await self._run(self._try_acquire(cost))

    async def acquire(self, cost: float = 1, *, timeout_s: float = 10.0) -> Decision:
        """Take ``cost`` tokens, waiting up to ``timeout_s``; raises ``RateLimited`` after."""
        return await self._run(self._acquire(cost, timeout_s))

    async def peek(self, cost: float = 1) -> Decision:
        """What ``try_acquire(cost)`` would decide now, without taking anything."""
        return await self._run(self._peek(cost))

    async def reset(self) -> None:
        """Refill the bucket for every process."""
        await self._run(self._reset())


class LeakyBucket(AsyncShared, _shaping.LeakyBucketCore):
    __doc__ = _shaping.LeakyBucketCore.__doc__

    async def try_acquire(self, cost: float = 1) -> LeakyDecision:
        """Reserve a departure slot; the caller waits ``delay_s`` itself before proceeding."""
        return await self._run(self._try_acquire(cost))

    async def acquire(self, cost: float = 1, *, timeout_s: float = 10.0) -> LeakyDecision:
        """Reserve a slot and sleep until it; while the queue is full, retry until ``timeout_s``."""
        return await self._run(self._acquire(cost, timeout_s))

    async def peek(self, cost: float = 1) -> LeakyDecision:
        """The delay a request would get now, without reserving a slot."""
        return await self._run(self._peek(cost))

    async def reset(self) -> None:
        """Empty the queue for every process."""
        await self._run(self._reset())


class TrafficShaper(AsyncShared, _shaping.TrafficShaperCore):
    __doc__ = _shaping.TrafficShaperCore.__doc__

    @classmethod
    def with_global_limit(cls, client: Any, rate_per_s: float, burst: float,
                          **config: Any) -> TrafficShaper:
        """A shaper with one global limit: ``TrafficShaper.with_global_limit(r, 10000.0, 1000)``."""
        return cls(client, global_limit=Limit(rate_per_s, burst), **config)

    async def try_acquire(self, client_id: str | None = None, *, cost: float = 1, bytes: float = 0,
                    backend: str | None = None, priority: int | None = None) -> Decision:
        """Check and charge every applicable limit at once; never waits. ``priority``
        (an int in [0, 9], higher first; None: unranked) ranks the request under
        contention for the global limit, by the pool's rule (see the class docstring)."""
        return await self._run(self._try_acquire(client_id, cost, bytes, backend, priority))

    async def acquire(self, client_id: str | None = None, *, cost: float = 1, bytes: float = 0,
                backend: str | None = None, timeout_s: float = 10.0,
                priority: int | None = None) -> Decision:
        """Like ``try_acquire``, waiting up to ``timeout_s``; raises ``RateLimited`` after."""
        return await self._run(self._acquire(client_id, cost, bytes, backend, timeout_s, priority))

    async def peek(self, client_id: str | None = None, *, cost: float = 1, bytes: float = 0,
             backend: str | None = None, priority: int | None = None) -> Decision:
        """What ``try_acquire`` would decide now, without charging (nor counting)."""
        return await self._run(self._peek(client_id, cost, bytes, backend, priority))

    async def set_global_limit(self, rate_per_s: float, burst: float) -> bool:
        """Override the global limit for the whole fleet."""
        return await self._run(self._set_global(rate_per_s, burst))

    async def set_client_rate_limit(self, client_id: str, rate_per_s: float, burst: float) -> bool:
        """Give one client its own request limit, for every process."""
        return await self._run(self._set("c", client_id, "client_id", rate_per_s, burst))

    async def remove_client_rate_limit(self, client_id: str) -> bool:
        """Return a client to the default client limit."""
        return await self._run(self._remove("c", client_id, "client_id"))

    async def set_client_bandwidth_limit(self, client_id: str, bytes_per_s: float,
                                   burst_bytes: float) -> bool:
        """Limit one client's bytes per second (checked when a request passes ``bytes=``)."""
        return await self._run(self._set("cb", client_id, "client_id", bytes_per_s, burst_bytes))

    async def set_backend_bandwidth_limit(self, backend: str, bytes_per_s: float,
                                    burst_bytes: float) -> bool:
        """Limit the bytes per second sent to one backend node."""
        return await self._run(self._set("bb", backend, "backend", bytes_per_s, burst_bytes))

    async def limits(self) -> dict[str, Limit]:
        """The shared overrides in force, e.g. ``{"c:alice": Limit(100.0, 50.0)}``."""
        return await self._run(self._limits())

    async def reset_client(self, client_id: str) -> None:
        """Refill one client's buckets for every process; its shared overrides stay."""
        await self._run(self._reset_client(client_id))

    async def reset(self) -> None:
        """Refill the global bucket for every process.

        State, not configuration: the shared overrides (``set_*``) stay in force until
        ``remove_*``. ``distlb reset shaper NAME`` does the same, for the global bucket
        and every client's buckets at once.
        """
        await self._run(self._reset())


class PriorityLimiter(AsyncShared, _shaping.PriorityLimiterCore):
    __doc__ = _shaping.PriorityLimiterCore.__doc__

    async def try_acquire(self, priority: int = 0, *, cost: float = 1) -> PriorityDecision:
        """Take tokens now only if nobody with a better place is waiting; never queues."""
        return await self._run(self._try_acquire(priority, cost))

    async def acquire(self, priority: int = 0, *, cost: float = 1,
                timeout_s: float = 10.0) -> PriorityDecision:
        """Queue at ``priority`` and wait for a turn; raises ``RateLimited`` on timeout or a
        full queue, leaving the queue either way."""
        return await self._run(self._acquire(priority, cost, timeout_s))

    async def reset(self) -> None:
        """Refill the bucket and drop every waiter."""
        await self._run(self._reset())
