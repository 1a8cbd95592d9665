"""Asyncio twin of ``distlb.balancer``: the same classes and methods, awaited.

Use a ``redis.asyncio`` client. Concurrent calls from many tasks are coalesced
into pipelines: one round trip carries many decisions, each still its own
atomic script.

GENERATED from distlb/balancer.py by tools/gen_aio.py: do not edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from distlb import _balancer
from distlb._background import AsyncTicker, tcp_check
from distlb._balancer import (
    BackendExists,
    BackendStats,
    BreakerSettings,
    Statistics,
    UnknownBackend,
)
from distlb._shell import AsyncShared
from distlb.aio.breaker import CircuitBreaker
from distlb.strategies import Backend, Context

__all__ = ["BackendExists", "BackendStats", "BreakerSettings", "ConnectionGuard",
           "LoadBalancer", "LoadBalancerContext", "Statistics", "UnknownBackend"]

#: Another name for a request context: ``LoadBalancerContext.with_key("user123")``.
LoadBalancerContext = Context


class LoadBalancer(AsyncShared, _balancer.LoadBalancerCore):
    __doc__ = _balancer.LoadBalancerCore.__doc__

    def _new_breaker(self, name: str, settings: BreakerSettings) -> CircuitBreaker:
        return CircuitBreaker(self.client, name, settings=settings, options=self.options)

    def breaker_for(self, backend_id: str) -> CircuitBreaker | None:
        """The circuit breaker of one backend (shared by every process), if the pool has them."""
        cb = self._breaker_of(backend_id)
        assert cb is None or isinstance(cb, CircuitBreaker)
        return cb

    async def add_backend(self, backend: Backend) -> None:
        """Add a backend to the shared registry; ``BackendExists`` if the id is taken."""
        await self._run(self._add(backend))

    async def remove_backend(self, backend_id: str) -> None:
        """Remove a backend (its counts and statistics too); ``UnknownBackend`` if absent."""
        await self._run(self._remove(backend_id))

    async def update_backend_health(self, backend_id: str, healthy: bool) -> None:
        """Mark a backend up or down for every process."""
        await self._run(self._set_health(backend_id, healthy))

    async def update_backend_weight(self, backend_id: str, weight: int) -> None:
        """Change a backend's weight for every process."""
        await self._run(self._set_weight(backend_id, weight))

    async def update_backend_metadata(self, backend_id: str, metadata: Mapping[str, Any]) -> None:
        """Replace a backend's metadata (zone, cost, ...) for every process; validated as
        ``add_backend`` validates it (``ConfigError``)."""
        await self._run(self._set_metadata(backend_id, metadata))

    async def backends(self) -> tuple[Backend, ...]:
        """The registry with live connection counts and statistics, fresh from the store."""
        return await self._run(self._backends())

    async def select_backend(self, ctx: Context | None = None) -> Backend:
        """Pick a backend (healthy, breaker not open) with the strategy; takes no lease."""
        return await self._run(self._select(ctx))

    async def record_result(self, backend_id: str, duration_s: float, success: bool) -> None:
        """Record a call made outside ``execute``/``connection``: statistics and breaker."""
        await self._run(self._record_result(backend_id, duration_s, success))

    async def execute(self, fn: Callable[..., Any], /, *args: Any, ctx: Context | None = None,
                **kwargs: Any) -> Any:
        """Rate-limit, select, lease, call ``fn(backend, *args, **kwargs)``, record; on
        failure retry on another backend as ``retry_policy`` allows."""
        self._renewer().ensure()
        return await self._run(self._execute(fn, args, kwargs, ctx))

    def connection(self, ctx: Context | None = None) -> ConnectionGuard:
        """``with balancer.connection(ctx) as backend:`` holds a lease for the block and
        records its duration and outcome."""
        return ConnectionGuard(self, ctx)

    async def get_statistics(self) -> Statistics:
        """Shared per-backend statistics; ``str()`` gives a one-line summary."""
        return await self._run(self._statistics())

    async def renew_leases(self) -> None:
        """Extend every lease this process holds (done for you in the background)."""
        await self._run(self._renew())

    async def check_health(self, check: Callable[[Backend], Any],
                     lease_s: float = 15.0) -> int:
        """One health-check round, if this process holds the checker role (a Redis lease,
        so only one process of the fleet probes): returns how many backends changed."""
        return await self._run(self._health_round(check, lease_s))

    def start_health_checks(self, check: Callable[[Backend], Any] | None = None, *,
                            interval_s: float = 5.0) -> None:
        """Probe backends every ``interval_s`` (TCP connect by default) and mark them up or
        down for the whole fleet; one process at a time does it."""
        probe = check if check is not None else tcp_check()
        self._checker = AsyncTicker(f"distlb-health-{self.name}", interval_s,
                                   lambda: self.check_health(probe, interval_s * 3))
        self._checker.ensure()

    def _renewer(self) -> AsyncTicker:
        ticker: AsyncTicker | None = getattr(self, "_renewer_ticker", None)
        if ticker is None:
            ticker = self._renewer_ticker = AsyncTicker(
                f"distlb-leases-{self.name}", self.lease_ttl_s / 3, self.renew_leases)
        return ticker

    def close(self) -> None:
        """Stop background work (lease renewal, health checks), leave the event bus and
        close the backends' breakers. The client stays open (it is yours)."""
        for attr in ("_renewer_ticker", "_checker"):
            ticker = getattr(self, attr, None)
            if ticker is not None:
                ticker.stop()
        for cb in list(self._breakers.values()):
            cb.close()
        super().close()


class ConnectionGuard:
    """Enter: select and lease a backend (returned). Exit: release it, recording the outcome."""

    def __init__(self, balancer: LoadBalancer, ctx: Context | None) -> None:
        self.balancer = balancer
        self.ctx = ctx
        self.lease: _balancer.Lease | None = None

    async def __aenter__(self) -> Backend:
        self.balancer._renewer().ensure()
        self.lease = await self.balancer._run(self.balancer._lease(self.ctx, set()))
        return self.lease.backend

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.lease is not None:
            await self.balancer._run(self.balancer._release(self.lease, e))
