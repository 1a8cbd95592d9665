"""Asyncio twin of ``distlb.balancer``: the same classes and methods, awaited.

Use a ``redis.asyncio`` client. Concurrent calls from many tasks are coalesced
into pipelines: one round trip carries many decisions, each still its own
atomic script.

GENERATED from distlb/balancer.py by tools/gen_aio.py: do not edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
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
from distlb._core.poolconfig import ConfigConflict, PoolConfig
from distlb._core.poolconfig import parse_assignments as parse_config_assignments
from distlb._shell import AsyncShared
from distlb.aio.breaker import CircuitBreaker
from distlb.strategies import Backend, Context

__all__ = ["BackendExists", "BackendStats", "BreakerSettings", "ConfigConflict",
           "ConnectionGuard", "LoadBalancer", "LoadBalancerContext", "PoolConfig", "Statistics",
           "UnknownBackend", "parse_config_assignments"]

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
        await self._run(self._registry.add(backend))

    async def remove_backend(self, backend_id: str) -> None:
        """Remove a backend (its counts and statistics too); ``UnknownBackend`` if absent."""
        await self._run(self._registry.remove(backend_id))

    async def update_backend_health(self, backend_id: str, healthy: bool) -> None:
        """Mark a backend up or down for every process."""
        await self._run(self._registry.set_health(backend_id, healthy))

    async def update_backend_weight(self, backend_id: str, weight: int) -> None:
        """Change a backend's weight for every process."""
        await self._run(self._registry.set_weight(backend_id, weight))

    async def update_backend_metadata(self, backend_id: str, metadata: Mapping[str, Any]) -> None:
        """Replace a backend's metadata (zone, cost, ...) for every process; validated as
        ``add_backend`` validates it (``ConfigError``)."""
        await self._run(self._registry.set_metadata(backend_id, metadata))

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

    async def flush_releases(self) -> None:
        """Send the leases this process returned with ``release="deferred"`` and has not sent
        yet (done for you: by the next call, within ``release_delay_s``, and by ``close``)."""
        await self._run(self._flush())

    def connection(self, ctx: Context | None = None) -> ConnectionGuard:
        """``with balancer.connection(ctx) as backend:`` holds a lease for the block and
        records its duration and outcome."""
        return ConnectionGuard(self, ctx)

    async def get_statistics(self) -> Statistics:
        """Shared per-backend statistics; ``str()`` gives a one-line summary."""
        return await self._run(self._statistics())

    async def config(self) -> PoolConfig:
        """The pool's configuration in force here, after reading the fleet-wide one stored in
        Redis (``version`` 0: none stored, the constructor arguments are in force)."""
        return await self._run(self._fleet_config.get())

    async def set_config(self, *, expected_version: int | None = None, by: str | None = None,
                   history_max: int = 100, **changes: Any) -> PoolConfig:
        """Change the configuration of every process of the pool (in force at once here, in
        the others at their next call: a pub/sub event, else within ``refresh_s``).

        Keywords: ``rate_limit``, ``client_limit`` (a ``Limit``, a rate string like
        ``"100/s"``, or None: no limit), ``breaker`` (a ``BreakerSettings`` or a dict of
        its numeric fields), ``strategy`` (a dict of numeric strategy parameters),
        ``unset`` (stored fields to remove: the constructor arguments are in force again).
        Everything is validated first (``ConfigError``). ``expected_version``: write only
        if that version is stored (compare-and-set), else ``ConfigConflict``. ``by``: who
        (default host:pid), kept in the history with the server time; ``history_max``:
        history entries kept, in [1, 10000]. Returns the configuration now in force."""
        return await self._run(self._fleet_config.set(changes, expected_version, by, history_max))

    async def config_history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` configuration changes, newest first: dicts with
        ``version``, ``by``, ``at_us`` (server time), ``set``, ``unset``, ``previous``."""
        return await self._run(self._fleet_config.history(limit))

    async def renew_leases(self) -> None:
        """Extend every lease this process holds (done for you in the background)."""
        await self._run(self._renew())

    async def check_health(self, check: Callable[[Backend], Any],
                     lease_s: float = 15.0) -> int:
        """One health-check round, if this process holds the checker role (a Redis lease,
        so only one process of the fleet probes): returns how many backends changed."""
        return await self._run(self._health.run(check, lease_s))

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
            if self.release == "deferred":
                self._flusher_ticker = AsyncTicker(f"distlb-releases-{self.name}",
                                                  self.release_delay_s, self.flush_releases)
        flusher: AsyncTicker | None = getattr(self, "_flusher_ticker", None)
        if flusher is not None:
            flusher.ensure()
        return ticker

    def close(self) -> None:
        """Stop background work (lease renewal, health checks), leave the event bus and
        close the backends' breakers. The client stays open (it is yours). Deferred
        releases are sent first."""
        if self._leases.pending:
            drive = self._run     # the asyncio twin's is a coroutine: see _finish_flush
            # Unreachable or refused: their leases expire by TTL.
            with contextlib.suppress(Exception):
                _finish_flush(drive(self._flush()))
        for attr in ("_renewer_ticker", "_flusher_ticker", "_checker"):
            ticker = getattr(self, attr, None)
            if ticker is not None:
                ticker.stop()
        for cb in self._pool_breakers.all():
            cb.close()
        super().close()


def _finish_flush(result: object) -> None:
    """``close()`` cannot wait. The sync flush has run already; the asyncio twin's flush
    (a coroutine) runs as a task of the running loop, or, without one, is dropped: its
    leases then return by their TTL like a killed process's."""
    if not inspect.iscoroutine(result):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        result.close()
        return
    task = loop.create_task(result)
    _FLUSHING.add(task)
    task.add_done_callback(_FLUSHING.discard)


#: Flushes started by close() in asyncio, held until done (the loop keeps only weak refs).
_FLUSHING: set[asyncio.Task[Any]] = set()


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
