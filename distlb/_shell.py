"""Where the shells bind I/O: the one place a primitive meets a client.

``SyncShared`` (the sync classes) and ``AsyncShared`` (``distlb.aio``) are the base
of every public class: ``_bind`` checks the client, joins the client's health
(its prober), and builds the typed runner ``self._run``; ``_open_bus`` starts the
client's event subscription. The core classes (``distlb._shaping`` ...) stay pure
and say only *what* to run; a shell method reads
``return self._run(self._try_acquire(cost))``, and mypy follows ``_run`` to the
runner's ``drive(op: Op[T]) -> T`` (sync) or ``-> Coroutine[..., T]`` (asyncio).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from distlb._core.guard import Command
from distlb._core.ops import Op
from distlb._events import AsyncBus, SyncBus, wait_closed
from distlb._runtime import AsyncRunner, StoreHealth, SyncRunner
from distlb._shared import Shared, check_client

T = TypeVar("T")


class SyncDrive(Protocol):
    """``SyncRunner.drive``: run an operation to its result."""

    def __call__(self, op: Op[T] | Command[T], /) -> T: ...


class AsyncDrive(Protocol):
    """``AsyncRunner.drive``: an awaitable of the operation's result."""

    def __call__(self, op: Op[T] | Command[T], /) -> Coroutine[Any, Any, T]: ...


class _Lifetime:
    """``aclose`` and ``async with`` for every public class (sync ones too: closing a
    sync object from a coroutine waits for its released subscriptions)."""

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """``close()``, then wait (briefly) until released event subscriptions are closed."""
        self.close()
        await wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _join_health(obj: Shared, client: Any, is_async: bool) -> None:
    obj.client = check_client(client, is_async)
    health = StoreHealth.acquire(client, is_async)
    # The client's health is shared by every object on it; the last one to go (close()
    # or garbage collection) stops its prober.
    obj._release_health = weakref.finalize(obj, health.release)
    obj._guard.health = health
    obj._guard.client = client


class SyncShared(Shared, _Lifetime):
    """A primitive on a sync redis-py client (``Redis``, ``RedisCluster``, a Sentinel master)."""

    _run: SyncDrive
    channel: str

    def _bind(self, client: Any, sleep: Callable[[float], Any] | None) -> None:
        _join_health(self, client, False)
        runner = SyncRunner(self._guard) if sleep is None else SyncRunner(self._guard, sleep)
        self._run = runner.drive

    def _open_bus(self) -> SyncBus:
        return SyncBus.get(self.client, self.channel, self.clock)


class AsyncShared(Shared, _Lifetime):
    """A primitive on a ``redis.asyncio`` client: concurrent calls coalesce into pipelines."""

    _run: AsyncDrive
    channel: str

    def _bind(self, client: Any, sleep: Callable[[float], Any] | None) -> None:
        _join_health(self, client, True)
        runner = AsyncRunner(self._guard) if sleep is None \
            else AsyncRunner(self._guard, sleep=sleep)
        self._run = runner.drive

    def _open_bus(self) -> AsyncBus | None:
        return AsyncBus.get(self.client, self.channel, self.clock)
