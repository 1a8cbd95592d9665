"""The base of every shared primitive: name, keys, store failure policy, runner.

Subclasses say what ``kind`` of entity they are (the ``tb`` in
``distlb:{tb:api}``); the sync and asyncio shells set ``_runner``.
"""

from __future__ import annotations

import inspect
import time
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from distlb import _keys
from distlb._core.ops import Call, Op
from distlb._events import wait_closed
from distlb._runtime import (
    AsyncRunner,
    Command,
    GuardStats,
    StoreGuard,
    StoreHealth,
    SyncRunner,
    no_policy,
)
from distlb._scripts import script
from distlb._validate import StorePolicy, number, store_policy
from distlb.errors import ConfigError


def check_client(client: Any, is_async: bool) -> Any:
    """``client`` if it looks like a redis-py client of the right flavour, else ConfigError.

    Checked at construction so a URL string or a sync client handed to a ``distlb.aio``
    class fails here, naming the argument, not at first use with an AttributeError.
    """
    execute = getattr(client, "execute_command", None)
    if isinstance(client, (str, bytes)) or not callable(getattr(client, "evalsha", None)):
        builder = "distlb.aio.connect" if is_async else "distlb.connect"
        hint = (f" (build one from a URL with {builder}(url), or {builder}() for "
                f"$DISTLB_REDIS_URL)")
        raise ConfigError("client", f"must be a redis-py (or valkey-py) client, got "
                                    f"{type(client).__name__}{hint}")
    if callable(execute) and inspect.iscoroutinefunction(execute) != is_async:
        want, got = ("an asyncio", "a sync") if is_async else ("a sync", "an asyncio")
        raise ConfigError("client", f"must be {want} client (redis.asyncio.Redis for distlb.aio, "
                                    f"redis.Redis otherwise), got {got} "
                                    f"{type(client).__name__} (distlb.aio.connect(url) builds "
                                    f"an asyncio one, distlb.connect(url) a sync one)")
    return client

Clock = Callable[[], float]


class Shared:
    """A primitive whose state lives in the store under ``<prefix>:{<kind>:<name>}``.

    ``on_store_error`` says what happens while the store is unreachable (each
    primitive documents its three policies); the primitive resumes by itself as
    soon as the store answers the client's probe (every 50 ms during an outage),
    or at the latest after ``retry_store_after_s`` seconds. A store that refuses
    the client (password, ACL, TLS) raises StoreAuthError: no policy applies.
    ``close()`` (or ``with``/``async with``) releases background work.
    ``clock`` (seconds, monotonic) and ``sleep`` are injectable for tests; they
    only ever time local waiting, never shared state.
    """

    kind: ClassVar[str] = ""
    #: Set by the shells: SyncRunner (sync classes) or AsyncRunner (distlb.aio).
    _runner: ClassVar[type[SyncRunner] | type[AsyncRunner]]

    def __init__(self, client: Any, name: str, *, prefix: str = _keys.DEFAULT_PREFIX,
                 on_store_error: StorePolicy, retry_store_after_s: float = 1.0,
                 clock: Clock = time.monotonic,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.name = name
        self.prefix = _keys.check_prefix(prefix)
        self.key = _keys.entity(self.prefix, self.kind, _keys.escape(name, "name"))
        self.on_store_error = store_policy(on_store_error)
        retry = number("retry_store_after_s", retry_store_after_s, high=3600)
        self.clock = clock
        is_async = self._runner is AsyncRunner
        self.client = check_client(client, is_async)
        health = StoreHealth.acquire(client, is_async)
        # The client's health is shared by every object on it; the last one to go (close()
        # or garbage collection) stops its prober.
        self._release_health = weakref.finalize(self, health.release)
        self._guard = StoreGuard(f"{_keys.KINDS[self.kind]} {name!r}", retry, clock, health)
        runner = self._runner(client, self._guard) if sleep is None \
            else self._runner(client, self._guard, sleep=sleep)
        # Sync shells get results, asyncio shells awaitables: typed per shell (see pyproject).
        self._run: Callable[[Op[Any] | Command], Any] = runner.drive

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self.name!r}, key={self.key!r})"

    @property
    def store_stats(self) -> GuardStats:
        """Calls, store errors, fallbacks and outages seen by this object."""
        return self._guard.stats

    def _delete(self, keys: Sequence[str]) -> Call[int]:
        # No failure policy: a reset that silently did nothing would mislead.
        return Call(script("delete"), tuple(keys), (), int,
                    no_policy(f"{_keys.KINDS[self.kind]} {self.name!r} not reset"))

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release what this object holds in the background (its share of the client's
        event subscription and store prober); the client itself stays open (it is yours).
        Idempotent; the object stays usable and rejoins what it needs on use."""
        self._release_health()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def aclose(self) -> None:
        """``close()``, then wait (briefly) until released event subscriptions are closed."""
        self.close()
        await wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
