"""The base of every shared primitive: name, keys, store failure policy (pure).

Subclasses say what ``kind`` of entity they are (the ``tb`` in
``distlb:{tb:api}``). The I/O (client check, runner, the client's health) is bound
by the shells' ``_bind`` (``distlb._shell``): nothing here imports a client library.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self, TypedDict, TypeVar, Unpack

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
Sleep = Callable[[float], Any]
D = TypeVar("D")


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingOptions:
    """How local waiting is timed: the part of the options every object takes, shared or not.

    * ``clock``: monotonic seconds; ``sleep(seconds)``: how local waits sleep (a
      coroutine function for ``distlb.aio``; ``None``: ``time.sleep`` /
      ``asyncio.sleep``). Both are for tests: they time only local waiting, never
      shared state, which runs on the server's clock.

    ``StoreOptions`` is a ``TimingOptions`` plus the store fields, so the one
    ``StoreOptions`` an application hands to its primitives can also be handed to a
    ``RetryPolicy`` (local: it reads only these two fields, a store field there would
    configure nothing). Keyword-only: ``TimingOptions(clock=fake.clock)``.
    """

    clock: Clock = time.monotonic
    sleep: Sleep | None = None

    def __post_init__(self) -> None:
        # The one validation of the timing fields (StoreOptions calls it too).
        if not callable(self.clock):
            raise ConfigError("clock", f"must be a callable returning monotonic seconds, got "
                                       f"{type(self.clock).__name__}")
        if self.sleep is not None and not callable(self.sleep):
            raise ConfigError("sleep", f"must be a callable taking seconds, or None, got "
                                       f"{type(self.sleep).__name__}")

    def replace(self, **changes: Unpack[TimingKeywords]) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class StoreOptions(TimingOptions):
    """The store settings every shared primitive takes, validated once, shared freely.

    Build one and hand it to every primitive of an application
    (``TokenBucket(r, "api", rate_per_s=10, burst=5, options=opts)``); the same
    fields are also accepted as keywords of every constructor (they build the
    options; giving a field both ways is a ``ConfigError`` naming it).

    * ``prefix``: the first part of every key, ``<prefix>:{<kind>:<name>}``, and of
      the event channel ``<prefix>:events``; 1-64 characters of letters, digits and
      ``._~@+=:-``. Processes share state only under the same prefix.
    * ``on_store_error``: what a primitive does while the store is unreachable:
      ``"fail_open"``, ``"fail_closed"`` or ``"local"`` (each primitive documents
      what the three mean for it). A store that refuses the client (password, ACL,
      TLS) raises ``StoreAuthError`` whatever the policy.
    * ``retry_store_after_s``: seconds, in (0, 3600]: the longest a primitive skips
      the store after an error before trying it again (it resumes sooner, as soon
      as the client's probe sees the store answer).
    * ``clock``, ``sleep`` (keyword-only): from ``TimingOptions``, which a local
      ``RetryPolicy`` takes too: one fake clock given here times every object.
    """

    prefix: str = _keys.DEFAULT_PREFIX
    on_store_error: StorePolicy = "fail_open"
    retry_store_after_s: float = 1.0

    def __post_init__(self) -> None:
        # The one validation of these fields (frozen: the checked values are set directly).
        object.__setattr__(self, "prefix", _keys.check_prefix(self.prefix))
        object.__setattr__(self, "on_store_error", store_policy(self.on_store_error))
        object.__setattr__(self, "retry_store_after_s",
                           number("retry_store_after_s", self.retry_store_after_s, high=3600))
        TimingOptions.__post_init__(self)   # slots=True: no zero-argument super()

    def replace(self, **changes: Unpack[StoreKeywords]) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


class TimingKeywords(TypedDict, total=False):
    """The fields of ``TimingOptions`` as constructor keywords (for type checkers; a test
    keeps the two lists equal)."""

    clock: Clock
    sleep: Sleep | None


class StoreKeywords(TimingKeywords, total=False):
    """The fields of ``StoreOptions`` as constructor keywords (for type checkers; a test
    keeps the two lists equal)."""

    prefix: str
    on_store_error: StorePolicy
    retry_store_after_s: float


def merge(kind: type[D], value: D | None, argument: str, keywords: Mapping[str, Any]) -> D:
    """``value`` (an options object given as ``argument=``), or one built from ``keywords``.

    The keywords build the object when ``value`` is None; with both, a field given
    both ways is a ConfigError naming it (there is no silent precedence).
    """
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(keywords) - names)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    if value is None:
        return kind(**keywords)
    if not isinstance(value, kind):
        raise ConfigError(argument, f"must be a distlb.{kind.__name__} or None, got "
                                    f"{type(value).__name__}")
    if keywords:
        field = sorted(keywords)[0]
        raise ConfigError(field, f"given both as a keyword and in {argument}=: give it once "
                                 f"(as a keyword, or with {argument}.replace({field}=...))")
    return value


def timing_options(options: TimingOptions | None, keywords: Mapping[str, Any]) -> TimingOptions:
    """The timing of a local object (``RetryPolicy``): ``options=`` (a ``TimingOptions``, or
    the application's ``StoreOptions``, of which only ``clock`` and ``sleep`` are read) or the
    ``clock``/``sleep`` keywords (see ``merge``)."""
    return merge(TimingOptions, options, "options", keywords)


def store_options(options: StoreOptions | None, keywords: Mapping[str, Any]) -> StoreOptions:
    """The options of a constructor: ``options=`` or the store keywords (see ``merge``)."""
    return merge(StoreOptions, options, "options", keywords)


class Shared:
    """A primitive whose state lives in the store under ``<prefix>:{<kind>:<name>}``.

    The store settings (``prefix``, ``on_store_error``, ``retry_store_after_s``,
    ``clock``, ``sleep``) come from ``options=StoreOptions(...)`` or from the same
    keywords, validated once by ``StoreOptions``. ``on_store_error`` says what
    happens while the store is unreachable (each primitive documents its three
    policies); the primitive resumes by itself as soon as the store answers the
    client's probe (every 50 ms during an outage), or at the latest after
    ``retry_store_after_s`` seconds. A store that refuses the client (password,
    ACL, TLS) raises StoreAuthError: no policy applies. ``close()`` (or
    ``with``/``async with``) releases background work.
    """

    kind: ClassVar[str] = ""
    #: The redis-py client (bound by the shell; opaque to the core).
    client: Any

    def __init__(self, client: Any, name: str, *, options: StoreOptions | None = None,
                 **store: Unpack[StoreKeywords]) -> None:
        opts = self.options = store_options(options, store)
        self.name = name
        self.prefix = opts.prefix
        self.key = _keys.entity(self.prefix, self.kind, _keys.escape(name, "name"))
        self.on_store_error: StorePolicy = opts.on_store_error
        self.clock = opts.clock
        self._guard = StoreGuard(f"{_keys.KINDS[self.kind]} {name!r}",
                                 opts.retry_store_after_s, opts.clock)
        self._release_health: Callable[[], Any] = _nothing
        self._bind(client, opts.sleep)

    def _bind(self, client: Any, sleep: Sleep | None) -> None:
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
