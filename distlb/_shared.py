"""The base of every shared primitive: name, keys, store failure policy (pure).

Subclasses say what ``kind`` of entity they are (the ``tb`` in
``distlb:{tb:api}``). The I/O (client check, runner, the client's health) is bound
by the shells' ``_bind`` (``distlb._shell``): nothing here imports a client library.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from distlb import _keys
from distlb._core.guard import GuardStats, StoreGuard, no_policy
from distlb._core.ops import Call
from distlb._core.scripts import script
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
    #: The redis-py client (bound by the shell; opaque to the core).
    client: Any

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
        self._guard = StoreGuard(f"{_keys.KINDS[self.kind]} {name!r}", retry, clock)
        self._release_health: Callable[[], Any] = _nothing
        self._bind(client, sleep)

    def _bind(self, client: Any, sleep: Callable[[float], Any] | None) -> None:
        """Bind the I/O: check ``client``, set ``self.client``, give the guard the client
        and its health, build the runner (``self._run``). Done by the shells
        (``distlb._shell.SyncShared`` / ``AsyncShared``), the only place I/O is bound."""
        raise TypeError(f"{type(self).__name__} is a core class: use distlb.{type(self).__name__}"
                        f" or distlb.aio.{type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self.name!r}, key={self.key!r})"

    @property
    def store_stats(self) -> GuardStats:
        """Calls, store errors, fallbacks and outages seen by this object."""
        return self._guard.stats

    def _delete(self, keys: Sequence[str]) -> Call[int]:
        # No failure policy: a reset that silently did nothing would mislead.
        return Call(script("delete"), tuple(keys), (), int,
                    no_policy(f"{_keys.KINDS[self.kind]} {self.name!r} not reset"), self._guard)

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



def _nothing() -> None:
    return None
